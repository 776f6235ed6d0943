"""The command line as a new user meets it: ``--help``, ``--version`` and commands that load no model answer
without importing torch or transformers; the shared options go before or after a command's name; a
``splice train`` run folder is taken wherever an adapter folder is; ``splice serve`` says under which names it
serves which folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

import splice
from splice.cli import COMMANDS, build_parser, main
from splice.cli.common import RUN_ADAPTER, adapter_path

from helpers import perturb
from serving import char_tokenizer, encoder
from tiny_models import tiny_model

# the shortest arguments each command parses: enough to see where the shared options may go
SMALLEST = {
    "train": [], "eval": ["run"], "predict": ["--adapter", "run"], "serve": [], "fedavg": ["a", "b", "--out", "o"],
    "info": ["run"], "convert": ["run", "dst", "--model", "m", "--to", "peft"],
    "merge": ["run", "--model", "m", "--out", "o"], "hub": ["list"],
}


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- start-up ------------------------------------------------------------------------------------------------


# `splice train --help` is not here: it lists the registry's methods (plugins' too), whose modules need torch.
@pytest.mark.parametrize("argv", [["--version"], ["--help"], *([command, "--help"] for command in COMMANDS
                                                               if command != "train"),
                                  ["hub", "list"], ["-q", "hub", "list", "--json"]], ids=" ".join)
def test_commands_that_load_no_model_import_neither_torch_nor_transformers(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPLICE_HUB": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "splice", *argv], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "splice.cli" in imported
    assert not imported & {"torch", "transformers"}


def test_a_failing_train_says_one_line_even_with_every_extra_installed(tmp_path):
    # peft imports torchao when it is installed (the quantize extra), which warns at import about CUDA
    # extensions a CPU never loads: four lines above splice's own error before the fix.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "splice", "train", "--data", str(tmp_path / "missing.csv"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: Data ")


def test_lazy_package_names_are_the_real_ones():
    from splice.adapted import attach

    assert splice.attach is attach and splice.heads.Classification.kind == "classification"
    assert set(splice.__all__) <= set(dir(splice))
    assert all(getattr(splice, name) is not None for name in splice.__all__)
    with pytest.raises(AttributeError, match="no attribute 'atach'"):
        splice.atach  # noqa: B018


# -- shared options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_shared_options_go_before_or_after_the_command(command):
    parser = build_parser()
    argv = [command, *SMALLEST[command]]
    assert parser.parse_args(argv).quiet is False
    assert parser.parse_args(["-q", *argv]).quiet is True
    assert parser.parse_args([*argv, "--quiet"]).quiet is True
    if command == "hub":
        assert parser.parse_args(["hub", "-q", "list"]).quiet is True


def test_train_records_its_command_line_with_shared_options_before_it():
    from splice.cli.train import command_line

    assert command_line(["-q", "train", "--data", "train.csv"]) == "splice -q train --data train.csv"
    assert command_line(["train", "--method", "lora"]) == "splice train --method lora"
    assert command_line(["tests/test_train.py", "-k", "train"]) == ""  # not a splice command line


def test_quiet_before_the_command_silences_it(capsys, tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("x", splice.LoRA(r=2))
    model.save("x", tmp_path / "x")
    code, out, err = run(capsys, "-q", "hub", "--root", tmp_path / "hub", "push", tmp_path / "x", "x", "--version", "1")
    assert (code, out, err) == (0, "x@1\n", "")
    code, out, err = run(capsys, "hub", "--root", tmp_path / "hub", "push", tmp_path / "x", "x", "--version", "1")
    assert code == 0 and "splice: pushing" in err


# -- run folders ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "bert"
    tiny_model("bert").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run_dir(bert_dir, tmp_path_factory) -> Path:
    """What ``splice train --out RUN`` leaves: RUN/adapter (here a LoRA), metrics.json, checkpoints/."""
    run = tmp_path_factory.mktemp("runs") / "tweets-lora"
    model = splice.attach(AutoModel.from_pretrained(bert_dir))
    model.add("tweets", splice.LoRA(r=2))
    perturb(model.adapters["tweets"], seed=1)
    model.save("tweets", run / RUN_ADAPTER)
    (run / "metrics.json").write_text("{}\n")
    (run / "checkpoints").mkdir()
    return run


def test_a_run_folder_stands_for_its_adapter(run_dir, tmp_path):
    assert adapter_path(str(run_dir)) == str(run_dir / RUN_ADAPTER)
    for unchanged in (run_dir / RUN_ADAPTER, tmp_path / "missing", "tweets@1.0"):
        assert adapter_path(str(unchanged)) == str(unchanged)
    (tmp_path / RUN_ADAPTER).mkdir()  # a folder named adapter/ that holds no adapter is nothing to take
    assert adapter_path(str(tmp_path)) == str(tmp_path)


def test_info_convert_merge_and_hub_push_take_a_run_folder(capsys, run_dir, bert_dir, tmp_path):
    code, out, _ = run(capsys, "info", run_dir, "--json", "-q")
    assert code == 0 and json.loads(out)["path"] == str(run_dir / RUN_ADAPTER)
    code, out, err = run(capsys, "convert", run_dir, tmp_path / "peft", "--model", bert_dir, "--to", "peft", "-q")
    assert code == 0, err
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    code, _, err = run(capsys, "merge", run_dir, "--model", bert_dir, "--out", tmp_path / "merged", "-q")
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file()
    code, out, err = run(capsys, "hub", "--root", tmp_path / "hub", "push", run_dir, "tweets", "--version", "1", "-q")
    assert (code, out) == (0, "tweets@1\n"), err


# -- serve ---------------------------------------------------------------------------------------------------


def test_serve_lists_each_adapter_with_the_name_requests_use_and_its_folder(capsys, tmp_path, monkeypatch):
    import uvicorn

    model_dir = tmp_path / "model"
    tiny_model("bert").save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    trained = encoder(2)
    trained.save("a0", tmp_path / "out" / "tweet-sentiment-lora" / RUN_ADAPTER)  # a splice train run
    trained.save("a1", tmp_path / "out" / "plain")                               # an adapter folder
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # print the banner, serve nothing
    code, out, err = run(capsys, "serve", "--model", model_dir, "--adapters", tmp_path / "out", "--port", "0",
                         "--device", "cpu", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2] == "adapters found: 2"
    assert lines[3].split() == ["adapter", "state", "from"]
    rows = {line.split()[0]: line.split()[2] for line in lines[4:]}
    assert rows == {"a1": str(tmp_path / "out" / "plain"),
                    "tweet-sentiment-lora": str(tmp_path / "out" / "tweet-sentiment-lora" / RUN_ADAPTER)}
