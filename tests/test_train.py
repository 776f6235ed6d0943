"""``splice train / eval / predict / fedavg`` end to end on tiny models and small data files.

Each run checks what a user relies on: the files a run writes, metrics that
``splice eval`` reproduces from the saved adapter, the base left untouched by
adapter methods, checkpoints that hold only what trains, resume after a kill,
and clear refusals of bad input.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import splice.train.inference as inference
from splice.cli import main
from splice.methods import BUILT_IN, recipe
from splice.train import TrainConfig, train

from helpers import TINY_OPTIONS
from train_fixtures import save_tiny, sentiment_csv, tagging_conll, text_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {
        "bert": save_tiny("bert", root / "bert"),
        "llama": save_tiny("llama", root / "llama"),
        "csv": sentiment_csv(root / "sentiment.csv"),
        "conll": tagging_conll(root / "ner.conll"),
        "jsonl": text_jsonl(root / "lm.jsonl"),
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def quick(files, out: Path, *extra) -> list:
    """A short classification run on the tiny BERT."""
    return ["train", "--model", files["bert"], "--data", files["csv"], "--out", out, "--epochs", "2",
            "--batch-size", "8", "--learning-rate", "0.01", "--logging-steps", "2", "-q", *extra]


def test_classification_run_writes_adapter_metrics_curves_and_eval_reproduces_them(files, tmp_path, capsys):
    out = tmp_path / "run"
    before = load_file(files["bert"] / "model.safetensors")
    code, printed, _ = run(capsys, *quick(files, out))
    assert code == 0
    assert "validation accuracy:" in printed and "trainable parameters:" in printed and str(out / "adapter") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == {"neg", "pos"}
    assert metrics["rows"] == {"train": 48, "validation": 6, "test": 6}
    assert 0 < metrics["trainable_percent"] < 100
    assert (out / "curves.png").stat().st_size > 1000
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    assert meta["training"]["method"] == "houlsby" and meta["training"]["metrics"]["test"]["accuracy"] == \
        metrics["test"]["accuracy"]
    assert "## Training" in (out / "adapter" / "README.md").read_text()
    after = load_file(files["bert"] / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)

    code, printed, _ = run(capsys, "eval", out / "adapter", "--json", "-q")
    assert code == 0
    assert json.loads(printed)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    code, printed, _ = run(capsys, "predict", "--adapter", out / "adapter", "the film was great", "-q")
    assert code == 0 and printed.splitlines()[1].split()[0] in ("neg", "pos")


def test_progress_goes_to_stderr_results_to_stdout_and_the_run_folder_is_the_adapter(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [arg for arg in quick(files, out, "--epochs", "1") if arg != "-q"]  # with progress, as users run it
    code, printed, err = run(capsys, *argv)
    assert code == 0, err
    # `splice train ... > results.txt` keeps the results alone
    assert [line.partition(":")[0] for line in printed.splitlines()] == [
        "validation accuracy", "test accuracy", "trainable parameters", "adapter", "training curves", "metrics"]
    assert "splice: data:" in err and "'loss':" in err  # the run's notes and the Trainer's log lines
    code, printed, err = run(capsys, "eval", out, "--json", "-q")  # the run folder, not out/adapter
    assert code == 0, err
    assert json.loads(printed)["accuracy"] == pytest.approx(json.loads((out / "metrics.json").read_text())
                                                             ["test"]["accuracy"])
    code, printed, err = run(capsys, "predict", "--adapter", out, "the film was great", "-q")
    assert code == 0 and printed.splitlines()[1].split()[0] in ("neg", "pos"), err


def test_checkpoints_hold_only_trainable_tensors_and_the_best_one_is_kept(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *quick(files, out, "--save-total-limit", "1"))[0] == 0
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert checkpoints, "no checkpoint written"
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"]).name
    assert best in [c.name for c in checkpoints]
    for checkpoint in checkpoints:
        tensors = load_file(checkpoint / "trainable.safetensors")
        assert tensors and all(key.startswith("adapters.") for key in tensors)  # no base weight in a checkpoint
        assert (checkpoint / "adapter" / "adapter.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).name == best


def test_full_fine_tuning_and_probe_share_the_path(files, tmp_path, capsys):
    full, probe = tmp_path / "full", tmp_path / "probe"
    assert run(capsys, *quick(files, full, "--method", "full", "--learning-rate", "1e-3"))[0] == 0
    assert run(capsys, *quick(files, probe, "--method", "probe", "--head-layers", "1"))[0] == 0
    full_metrics = json.loads((full / "metrics.json").read_text())
    probe_metrics = json.loads((probe / "metrics.json").read_text())
    assert full_metrics["trainable"] > full_metrics["base_parameters"] > probe_metrics["trainable"]
    tuned, original = load_file(full / "model" / "model.safetensors"), load_file(files["bert"] / "model.safetensors")
    assert any(not torch.equal(tuned[k], original[k]) for k in original)  # full fine-tuning changed the base
    code, printed, _ = run(capsys, "eval", full / "adapter", "--json", "-q")  # reads the fine-tuned base
    assert code == 0 and json.loads(printed)["accuracy"] == pytest.approx(full_metrics["test"]["accuracy"])


# Every training recipe of splice's methods, from the registry: a new method is trained here without an edit.
# The probe and full fine-tuning have their own test above.
TRAINED = [name for cls in BUILT_IN.values() for name in cls.training_recipes() if name not in ("probe", "full")]


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_and_evaluates(files, tmp_path, capsys, method):
    out = tmp_path / method
    options = [arg for key, value in TINY_OPTIONS.get(method, {}).items()
               for arg in ("--option", f"{key}={json.dumps(value)}")]
    assert run(capsys, *quick(files, out, "--method", method, "--epochs", "1", *options))[0] == 0
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    assert meta["training"]["method"] == method
    trained = load_file(out / "adapter" / "adapter.safetensors")
    untrained = _fresh_adapter(files, meta["config"])
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained if not k.startswith("head."))  # it learned
    code, printed, _ = run(capsys, "eval", out / "adapter", "--json", "-q")
    assert code == 0
    assert json.loads(printed)["accuracy"] == pytest.approx(json.loads((out / "metrics.json").read_text())["test"]
                                                            ["accuracy"])


def _fresh_adapter(files, config: dict) -> dict:
    """The adapter's tensors as training starts them (same seed, same config), for a did-it-learn check."""
    from transformers import AutoModel, set_seed

    import splice
    from splice.methods import config_from_dict

    model = splice.attach(AutoModel.from_pretrained(files["bert"]))
    set_seed(0)
    model.add("fresh", config_from_dict(config))
    _, tensors = model.adapters["fresh"].export()
    return {k: v.detach() for k, v in tensors.items()}


def test_tagging_reports_entity_f1_and_predicts_tags(files, tmp_path, capsys):
    out = tmp_path / "ner"
    code, printed, _ = run(capsys, "train", "--model", files["bert"], "--data", files["conll"], "--task", "tagging",
                           "--out", out, "--epochs", "3", "--batch-size", "8", "--learning-rate", "0.01", "-q")
    assert code == 0 and "validation entity F1:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_type"]) <= {"person", "location"}
    assert 0 <= metrics["test"]["f1"] <= 1
    code, printed, _ = run(capsys, "eval", out / "adapter", "--json", "-q")
    assert json.loads(printed)["f1"] == pytest.approx(metrics["test"]["f1"])
    code, printed, _ = run(capsys, "predict", "--adapter", out / "adapter", "alice went to paris", "-q")
    assert code == 0 and printed.splitlines()[1].split()[0].startswith("alice")


def test_causal_lm_reports_perplexity_before_and_after_and_generates(files, tmp_path, capsys):
    out = tmp_path / "lm"
    code, printed, _ = run(capsys, "train", "--model", files["llama"], "--data", files["jsonl"], "--task", "causal-lm",
                           "--method", "lora", "--option", 'targets=["q","k","v","o"]', "--out", out, "--epochs", "3",
                           "--batch-size", "8", "--learning-rate", "0.01", "-q")
    assert code == 0 and "test perplexity:" in printed and "before training" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["perplexity"] < metrics["test"]["perplexity_before"]
    assert math.isclose(metrics["test"]["perplexity"], math.exp(metrics["test"]["loss"]))
    code, printed, _ = run(capsys, "predict", "--adapter", out / "adapter", "--max-new-tokens", "4", "the cat", "-q")
    assert code == 0 and len(printed.splitlines()) == 2


def test_config_file_with_command_line_overrides(files, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {files['bert']}\ndata: {files['csv']}\nmethod: lora\nepochs: 1\nbatch-size: 8\n"
                      f"options:\n  r: 4\nout: {tmp_path / 'from-file'}\n")
    assert run(capsys, "train", "--config", config, "--learning-rate", "0.005", "-q")[0] == 0
    meta = json.loads((tmp_path / "from-file" / "adapter" / "adapter.json").read_text())
    assert meta["config"]["method"] == "lora" and meta["config"]["r"] == 4  # from the file
    assert meta["training"]["learning_rate"] == 0.005  # the command line wins over the file
    with pytest.raises(Exception, match="unknown option"):
        TrainConfig.from_file(_write(tmp_path / "bad.json", '{"learning_rat": 1}'))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("argv, words", [
    (["--method", "loraa"], ["invalid choice", "loraa"]),
    (["--option", "rank"], ["KEY=VALUE"]),
    (["--option", "bogus=1"], ["bogus"]),
    (["--resume"], ["no checkpoint", "--resume"]),
    (["--text-column", "body"], ["body", "text"]),
    (["--task", "tagging"], ["tokens", "--tokens-column"]),
    (["--precision", "bf16"], ["GPU"]),
])
def test_bad_input_is_one_error_line(files, tmp_path, capsys, argv, words):
    code, _, err = run(capsys, *quick(files, tmp_path / "bad", *argv))
    assert code == 2 and "Traceback" not in err
    assert all(word in err for word in words), err


def test_resume_after_a_kill_matches_an_uninterrupted_run(files, tmp_path):
    """Kill a run with SIGKILL after its second checkpoint, resume it, and compare with a run never stopped."""
    common = ["--model", files["bert"], "--data", files["csv"], "--max-steps", "60", "--eval-every", "4",
              "--batch-size", "4", "--learning-rate", "0.01", "--save-total-limit", "3", "-q"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "splice", "train", *common, "--out", whole], check=True, env=env)

    process = subprocess.Popen([sys.executable, "-m", "splice", "train", *common, "--out", killed], env=env)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "checkpoint-8" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists() and process.returncode == -signal.SIGKILL

    subprocess.run([sys.executable, "-m", "splice", "train", *common, "--out", killed, "--resume"], check=True, env=env)
    # the last checkpoint, not the final adapter: that is the best checkpoint, which may predate the kill
    resumed, uninterrupted = (load_file(d / "checkpoints" / "checkpoint-60" / "trainable.safetensors")
                              for d in (killed, whole))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6)


def test_python_api(files, tmp_path):
    result = train(TrainConfig(model=str(files["bert"]), data=str(files["csv"]), method="bitfit", epochs=1,
                               batch_size=16, out=str(tmp_path / "api")), say=lambda line: None)
    assert result.adapter == tmp_path / "api" / "adapter" and result.metrics["method"] == "bitfit"


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(files, tmp_path):
    """Data parallel on CPU (gloo): 2 processes × 8 rows give the adapter that 1 process × 16 rows gives."""
    common = ["--model", files["bert"], "--data", files["csv"], "--sizes", "16,4,4", "--method", "lora",
              "--option", "dropout=0", "--head-dropout", "0", "--epochs", "3", "--learning-rate", "0.01", "-q"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    single, double = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "splice", "train", *common, "--batch-size", "16", "--out", single],
                   check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "splice", "train", *common, "--batch-size", "8", "--out", double],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("validation accuracy:") == 1  # one process reports and writes
    one, two = (load_file(d / "checkpoints" / "checkpoint-3" / "trainable.safetensors") for d in (single, double))
    assert any(not torch.equal(t, torch.zeros_like(t)) for t in one.values())
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


def test_fedavg_weights_every_tensor_and_refuses_mismatches(files, tmp_path, capsys):
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    assert run(capsys, *quick(files, a, "--method", "lora", "--epochs", "1"))[0] == 0
    assert run(capsys, *quick(files, b, "--method", "lora", "--epochs", "1", "--seed", "1"))[0] == 0
    assert run(capsys, *quick(files, other, "--method", "ia3", "--epochs", "1"))[0] == 0
    code, _, err = run(capsys, "fedavg", a / "adapter", b / "adapter", "--weights", "100,300",
                       "--out", tmp_path / "avg", "-q")
    assert code == 0, err
    one, two = load_file(a / "adapter" / "adapter.safetensors"), load_file(b / "adapter" / "adapter.safetensors")
    averaged = load_file(tmp_path / "avg" / "adapter.safetensors")
    assert averaged.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(averaged[key], 0.25 * one[key] + 0.75 * two[key])
    assert run(capsys, "eval", tmp_path / "avg", "-q")[0] == 0  # the average knows its base and data

    code, _, err = run(capsys, "fedavg", a / "adapter", other / "adapter", "--out", tmp_path / "bad", "-q")
    assert code == 2 and "different configs" in err
    code, _, err = run(capsys, "fedavg", a / "adapter", b / "adapter", "--weights", "1", "--out", tmp_path / "bad",
                       "-q")
    assert code == 2 and "2 non-negative numbers" in err
    code, _, err = run(capsys, "fedavg", a / "adapter", "--out", tmp_path / "bad", "-q")
    assert code == 2 and "two or more" in err
    assert not (tmp_path / "bad").exists()


def test_fedavg_refuses_adapters_of_another_base(files, tmp_path, capsys):
    bert, llama = tmp_path / "bert", tmp_path / "llama"
    assert run(capsys, *quick(files, bert, "--method", "lora", "--epochs", "1"))[0] == 0
    assert run(capsys, "train", "--model", files["llama"], "--data", files["csv"], "--method", "lora", "--out", llama,
               "--epochs", "1", "-q")[0] == 0
    code, _, err = run(capsys, "fedavg", bert / "adapter", llama / "adapter", "--out", tmp_path / "bad", "-q")
    assert code == 2 and "different models" in err


def test_learning_rate_zero_is_taken_as_given(files, tmp_path, capsys):
    """0 is a learning rate, not "use the method's default": the adapter must come out as it started."""
    out = tmp_path / "still"
    assert run(capsys, *quick(files, out, "--method", "lora", "--epochs", "1", "--learning-rate", "0"))[0] == 0
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    assert meta["training"]["learning_rate"] == 0
    trained, untrained = load_file(out / "adapter" / "adapter.safetensors"), _fresh_adapter(files, meta["config"])
    assert all(torch.equal(trained[k], untrained[k]) for k in trained if not k.startswith("head."))


def test_predict_feeds_a_headline_adapter_its_training_prompt_format(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "headlines"
    code, _, err = run(capsys, "train", "--model", files["llama"], "--data", "bbc-headlines", "--task", "causal-lm",
                       "--method", "lora", "--out", out, "--limit", "30", "--max-steps", "1", "--batch-size", "4", "-q")
    assert code == 0, err
    seen = []
    real_predict = inference.predict

    def spy(loaded, name, texts, *args):
        seen.append(list(texts))
        return real_predict(loaded, name, texts, *args)

    monkeypatch.setattr(inference, "predict", spy)
    body = "Shares   rose sharply\n on Monday."
    assert run(capsys, "predict", "--adapter", out / "adapter", "--max-new-tokens", "2", body, "-q")[0] == 0
    assert run(capsys, "predict", "--adapter", out / "adapter", "--max-new-tokens", "2", "--raw", body, "-q")[0] == 0
    assert seen == [["Shares rose sharply on Monday.\n\nHeadline:"], [body]]
    # examples/headline_samples.py shows base and adapter headlines for the run's own test articles
    monkeypatch.setattr(sys, "argv", ["headline_samples.py", str(out / "adapter"), "--count", "2", "--limit", "30"])
    capsys.readouterr()
    runpy.run_path(str(REPO / "examples" / "headline_samples.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in printed] == ["reference", "base", str(out / "adapter")] * 2


def test_the_main_job_is_the_best_measured_recipe():
    """`splice train` with no options is Houlsby at 2e-3: 76.53 ± 0.42 on the tweet protocol, the best measured at
    <= 2 % trainable (benchmarks/quality_results.md); Pfeiffer at 1e-3, the earlier default, measured 74.57."""
    config = TrainConfig()
    assert (config.method, config.rate, config.data) == ("houlsby", 2e-3, "tweet-sentiment")
    assert recipe("houlsby").config({}).placement == "houlsby"
