"""The ``splice`` command line: info on every format and on hub references, convert round trips,
hub push/list/pull/rm, merge giving a model with the adapted outputs, and bad input answered with one
``error:`` line and exit code 2 (while real bugs keep their traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification

import splice
from splice import Bottleneck, LoRA
from splice.cli import COMMANDS, main
from splice.hub import ENV_VAR

from helpers import PEERS, main_output, perturb
from tiny_models import tiny_inputs, tiny_model


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``splice ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop what the test itself printed (e.g. transformers' loading bars)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str, words: tuple[str, ...] = ()) -> str:
    """``splice ARGV`` exits 2 with one ``error: ...`` line naming every one of ``words``, and no traceback."""
    code, _, err = run(capsys, *argv, "-q")
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BertModel saved with save_pretrained: the MODEL_PATH of these tests."""
    folder = tmp_path_factory.mktemp("models") / "bert"
    tiny_model("bert").save_pretrained(folder)
    return folder


def adapted(model_dir: Path, auto=AutoModel):
    return splice.attach(auto.from_pretrained(model_dir).eval())


@pytest.fixture
def lora_dir(bert_dir, tmp_path) -> Path:
    """A trained-looking (perturbed) LoRA for ``bert_dir``, saved as a splice folder."""
    model = adapted(bert_dir)
    model.add("sentiment", LoRA(r=2, targets=["q", "v", "down"]))
    perturb(model.adapters["sentiment"], seed=1)
    model.save("sentiment", tmp_path / "sentiment")
    return tmp_path / "sentiment"


def output_with(model_dir: Path, adapter, inputs, auto=AutoModel) -> torch.Tensor:
    model = adapted(model_dir, auto)
    model.activate(model.load(adapter))
    return main_output(model, inputs)


# -- the root ---------------------------------------------------------------------------------------------


def test_help_lists_every_command_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert all(f"    {command} " in out for command in COMMANDS)
    assert run(capsys, "--version")[:2] == (0, f"splice {splice.__version__}\n")
    code, _, err = run(capsys, "convert")  # argparse's own usage errors exit 2 as well
    assert code == 2 and "required" in err


def test_installed_console_script():
    script = Path(sys.executable).with_name("splice")
    assert script.is_file(), "reinstall splice (pip install -e .) to generate the console script"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in COMMANDS)


def test_bugs_keep_their_traceback(capsys, monkeypatch):
    from splice.cli import info

    def broken(source):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info, "describe", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", "anything"])


# -- info ---------------------------------------------------------------------------------------------------


def test_info_splice_folder(capsys, lora_dir):
    code, out, _ = run(capsys, "info", lora_dir)
    assert code == 0
    assert "format      splice (written by splice" in out
    assert "method      lora" in out and "r=2" in out
    assert "bert, hidden 32, 2 layers, 4 heads, vocabulary 128" in out
    code, out, _ = run(capsys, "info", lora_dir, "--json")
    report = json.loads(out)
    meta = json.loads((lora_dir / "adapter.json").read_text())
    assert (report["format"], report["name"], report["method"]) == ("splice", "sentiment", "lora")
    assert report["options"]["targets"] == ["q", "v", "down"]
    assert report["base"] == meta["base"] and report["parameters"] == meta["parameters"] > 0
    assert report["head"] is None and report["ref"] is None
    assert report["size"] == sum(p.stat().st_size for p in lora_dir.iterdir())


def test_info_peft_and_adapters_folders(capsys):
    code, out, _ = run(capsys, "info", PEERS / "peft_bert_lora" / "adapter", "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["format"], report["method"], report["written_by"]) == ("peft", "lora", "peft 0.21.2")
    assert report["options"]["r"] == 4 and report["options"]["target_modules"] == ["query", "value"]
    assert report["base"] == {"model_class": "BertModel"}
    # 2 layers x (query, value) x (A [4, 32] + B [32, 4])
    assert report["parameters"] == 2 * 2 * 2 * 4 * 32

    code, out, _ = run(capsys, "info", PEERS / "adapters_bert_lora" / "adapter", "--json")
    report = json.loads(out)
    assert (report["format"], report["method"], report["name"]) == ("adapters", "lora", "task")
    assert report["base"]["model_type"] == "bert" and report["base"]["hidden_size"] == 32
    assert report["options"]["attn_matrices"] == ["q", "v"] and report["parameters"] == 2 * 2 * 2 * 4 * 32

    code, out, _ = run(capsys, "info", PEERS / "adapters_llama_pfeiffer" / "adapter")
    assert code == 0 and "method      bottleneck" in out and "static head" in out
    code, out, _ = run(capsys, "info", PEERS / "peft_llama_prompt" / "adapter")
    assert code == 0 and "method      prompt_tuning" in out and "num_virtual_tokens=5" in out


def test_info_hub_reference(capsys, lora_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "hub"))
    assert run(capsys, "hub", "-q", "push", lora_dir, "sentiment", "--version", "1.0")[:2] == (0, "sentiment@1.0\n")
    code, out, _ = run(capsys, "info", "sentiment@1.0", "--json")
    report = json.loads(out)
    assert code == 0 and report["ref"] == "sentiment@1.0"
    assert Path(report["path"]).parent == tmp_path / "hub" / "objects"
    assert report["method"] == "lora" and report["name"] == "sentiment"
    refused(capsys, "info", "sentiment@2.0", words=("No adapter sentiment@2.0",))


def test_info_refusals(capsys, tmp_path):
    refused(capsys, "info", tmp_path / "missing", words=("No adapter folder",))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    refused(capsys, "info", tmp_path / "odd", words=("not an adapter folder",))
    (tmp_path / "odd" / "adapter_config.json").write_text('{"r": 8}')
    refused(capsys, "info", tmp_path / "odd", words=("neither a peft config",))


# -- convert ------------------------------------------------------------------------------------------------


def test_convert_peft_to_splice_to_peft(capsys, tmp_path):
    case = PEERS / "peft_bert_lora"
    base, original = case / "base", case / "adapter"
    expected = load_file(str(case / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}

    code, out, err = run(capsys, "convert", original, tmp_path / "as_splice", "--model", base, "--to", "splice",
                         "--name", "task")
    assert code == 0 and out.strip() == str(tmp_path / "as_splice")
    assert "loading AutoModel" in err  # progress on stderr, the result on stdout
    assert json.loads((tmp_path / "as_splice" / "adapter.json").read_text())["name"] == "task"
    code, _, _ = run(capsys, "convert", tmp_path / "as_splice", tmp_path / "as_peft", "--model", base,
                     "--to", "peft", "-q")
    assert code == 0 and (tmp_path / "as_peft" / "adapter_config.json").is_file()

    outs = [output_with(base, folder, inputs) for folder in (original, tmp_path / "as_splice", tmp_path / "as_peft")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert (outs[0] - expected["out"]).abs().max() < 1e-4
    written, read = load_file(str(tmp_path / "as_peft" / "adapter_model.safetensors")), load_file(
        str(original / "adapter_model.safetensors"))
    assert written.keys() == read.keys() and all(torch.equal(written[k], read[k]) for k in read)


def test_convert_refusals_are_one_line(capsys, tmp_path, lora_dir, bert_dir):
    pfeiffer = PEERS / "adapters_bert_pfeiffer"
    compacter = tmp_path / "compacter"  # a Compacter folder without the shared rule its config says it has
    shutil.copytree(pfeiffer / "adapter", compacter)
    config = json.loads((compacter / "adapter_config.json").read_text())
    config["config"]["phm_layer"] = True
    (compacter / "adapter_config.json").write_text(json.dumps(config))
    refused(capsys, "convert", compacter, tmp_path / "x", "--model", pfeiffer / "base", "--to", "splice",
            words=("Compacter", "shared rule"))
    assert not (tmp_path / "x").exists()

    model = adapted(bert_dir)
    model.add("bn", Bottleneck())
    model.save("bn", tmp_path / "bn")
    refused(capsys, "convert", tmp_path / "bn", tmp_path / "y", "--model", bert_dir, "--to", "peft",
            words=("peft has no format",))
    assert not (tmp_path / "y").exists()
    refused(capsys, "convert", lora_dir, tmp_path / "z", "--model", tmp_path / "no_model", "--to", "peft",
            words=("neither a local folder",))
    refused(capsys, "convert", tmp_path / "nothing", tmp_path / "z", "--model", bert_dir, "--to", "peft",
            words=("No adapter folder",))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    refused(capsys, "convert", lora_dir, tmp_path / "taken", "--model", bert_dir, "--to", "splice",
            words=("holds other files",))
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# -- hub ----------------------------------------------------------------------------------------------------


def test_hub_push_list_pull_rm(capsys, lora_dir, tmp_path):
    root = tmp_path / "registry"
    code, out, _ = run(capsys, "hub", "--root", root, "push", lora_dir, "sentiment", "--version", "1.0")
    assert (code, out) == (0, "sentiment@1.0\n")
    code, out, _ = run(capsys, "hub", "push", "--root", root, "-q", lora_dir, "other")  # --root after the action
    assert code == 0 and out.startswith("other@")

    code, out, _ = run(capsys, "hub", "--root", root, "list")
    header, *rows = out.strip().splitlines()
    assert header.split() == ["name", "version", "method", "base", "size", "created"]
    assert len(rows) == 2 and rows[1].split()[:3] == ["sentiment", "1.0", "lora"] and "bert, hidden 32" in rows[1]
    code, out, _ = run(capsys, "hub", "--root", root, "list", "--json")
    listed = {row["ref"]: row for row in json.loads(out)}
    assert listed["sentiment@1.0"]["size"] == sum(p.stat().st_size for p in lora_dir.iterdir())

    code, out, _ = run(capsys, "hub", "--root", root, "pull", "sentiment@1.0", tmp_path / "pulled")
    assert code == 0 and out.strip() == str(tmp_path / "pulled")
    assert all((tmp_path / "pulled" / p.name).read_bytes() == p.read_bytes() for p in lora_dir.iterdir())

    for ref in listed:
        assert run(capsys, "hub", "--root", root, "rm", ref)[0] == 0
    code, out, _ = run(capsys, "hub", "--root", root, "list")
    assert code == 0 and "empty" in out
    refused(capsys, "hub", "--root", root, "rm", "sentiment@1.0", words=("No adapter sentiment@1.0",))


def test_hub_refusals(capsys, lora_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "hub"))  # no --root: $SPLICE_HUB
    run(capsys, "hub", "push", lora_dir, "x", "--version", "1")
    stored = next((tmp_path / "hub" / "objects").iterdir())
    weights = stored / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    refused(capsys, "hub", "pull", "x@1", tmp_path / "pulled", words=("tampered",))
    assert not (tmp_path / "pulled").exists()
    refused(capsys, "info", "x@1", words=("tampered",))

    refused(capsys, "hub", "push", PEERS / "peft_bert_lora" / "adapter", "p", words=("not a splice adapter",))
    refused(capsys, "hub", "push", lora_dir, "../escape", words=("name",))
    refused(capsys, "hub", "pull", "no-version", tmp_path / "p", words=("not a hub reference",))


# -- merge --------------------------------------------------------------------------------------------------


def test_merge_saves_a_model_with_the_adapted_outputs(capsys, lora_dir, bert_dir, tmp_path):
    inputs = tiny_inputs("bert", padded=True)
    code, out, _ = run(capsys, "merge", lora_dir, "--model", bert_dir, "--out", tmp_path / "merged")
    assert code == 0 and out.strip() == str(tmp_path / "merged")
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    want = output_with(bert_dir, lora_dir, inputs)
    assert torch.allclose(main_output(merged, inputs), want, atol=1e-5)
    assert not torch.allclose(main_output(AutoModel.from_pretrained(bert_dir).eval(), inputs), want, atol=1e-3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left

    refused(capsys, "merge", lora_dir, "--model", bert_dir, "--out", tmp_path / "merged", words=("--overwrite",))
    assert run(capsys, "merge", lora_dir, "--model", bert_dir, "--out", tmp_path / "merged", "--overwrite",
               "-q")[0] == 0


def test_merge_carries_a_copied_head(capsys, tmp_path):
    """A classifier the adapter trained its own copy of (head="classifier") replaces the base's."""
    tiny_model("bert", head="classification").save_pretrained(tmp_path / "cls")
    model = adapted(tmp_path / "cls", AutoModelForSequenceClassification)
    model.add("task", LoRA(r=2), head="classifier")
    perturb(model.adapters["task"], seed=2)
    model.save("task", tmp_path / "task")
    inputs = tiny_inputs("bert")
    code, _, _ = run(capsys, "merge", tmp_path / "task", "--model", tmp_path / "cls", "--model-class", "seq-cls",
                     "--out", tmp_path / "merged", "-q")
    assert code == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    want = output_with(tmp_path / "cls", tmp_path / "task", inputs, AutoModelForSequenceClassification)
    assert torch.allclose(main_output(merged, inputs), want, atol=1e-5)


def test_merge_refusals(capsys, bert_dir, lora_dir, tmp_path):
    model = adapted(bert_dir)
    model.add("bn", Bottleneck())
    model.save("bn", tmp_path / "bn")
    refused(capsys, "merge", tmp_path / "bn", "--model", bert_dir, "--out", tmp_path / "m",
            words=("cannot be merged", "mergeable methods are", "LoRA", "IA3"))
    model.add("headed", LoRA(r=2), head=splice.heads.Classification(num_labels=2))
    model.save("headed", tmp_path / "headed")
    refused(capsys, "merge", tmp_path / "headed", "--model", bert_dir, "--out", tmp_path / "m",
            words=("classification head", "not part of the base"))
    assert not (tmp_path / "m").exists()
    refused(capsys, "merge", lora_dir, "--model", bert_dir, "--out", bert_dir, words=("base model's own folder",))
    shutil.copytree(lora_dir, tmp_path / "not_a_model")
    refused(capsys, "merge", lora_dir, "--model", bert_dir, "--out", tmp_path / "not_a_model", "--overwrite",
            words=("config.json",))
    assert (tmp_path / "not_a_model" / "adapter.json").is_file()
