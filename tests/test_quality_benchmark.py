"""``benchmarks/quality.py --quick`` on a tiny BERT and tiny slices of the real data: table, JSON, resume."""

from __future__ import annotations

import json

import pytest

from helpers import benchmark_module
from train_fixtures import save_tiny


@pytest.fixture(scope="module")
def quality():
    yield from benchmark_module("quality.py", "quality_benchmark")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny("bert", tmp_path_factory.mktemp("quality") / "bert")


def test_quick_run_prints_the_table_writes_json_and_resumes(quality, bert, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    argv = ["--quick", "--arms", "probe,lora", "--seeds", "3,4", "--model", str(bert), "--results", str(results)]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| arm | trainable % | test accuracy |" in printed
    assert "| probe |" in printed and "| lora |" in printed
    assert "| probe | 3 |" in printed  # the per-run table
    assert "peer" not in printed  # quick numbers are never set beside the peers' real ones
    for arm in ("probe", "lora"):  # --quick keeps only the first seed
        run = json.loads((results / "tweet-sentiment-quick" / arm / "seed3.json").read_text())
        assert run["arm"] == arm and run["seed"] == 3 and 0 <= run["test"] <= 1
        assert run["config"]["sizes"] == list(quality.QUICK_SIZES) and run["config"]["epochs"] == 1
        assert not (results / "tweet-sentiment-quick" / arm / "seed4.json").exists()
    probe = json.loads((results / "tweet-sentiment-quick" / "probe" / "seed3.json").read_text())
    assert probe["config"]["head_layers"] == 1 and probe["config"]["pooling"] == "mean"
    assert probe["config"]["learning_rate"] == 1e-3
    summary = json.loads((results / "tweet-sentiment-quick.json").read_text())
    assert [r["seed"] for r in summary["runs"]["lora"]] == [3]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished (arm, seed) was trained again")

    monkeypatch.setattr(quality, "run_one", no_training)
    assert quality.main(argv) == 0
    assert "| lora |" in capsys.readouterr().out


def test_tagging_reports_entity_f1(quality, bert, tmp_path, capsys):
    results = tmp_path / "results"
    assert quality.main(["--quick", "--data", "wnut16", "--arms", "bitfit", "--model", str(bert),
                         "--results", str(results)]) == 0
    assert "test entity F1" in capsys.readouterr().out
    run = json.loads((results / "wnut16-quick" / "bitfit" / "seed0.json").read_text())
    assert run["metric"] == "f1" and run["metrics"]["task"] == "tagging"


def test_peer_numbers_and_differences_in_the_full_table(quality):
    run = {"seed": 0, "test": 0.7563, "validation": 0.75, "trainable_percent": 1.65, "train_seconds": 400,
           "peak_memory_mb": 1200}
    text = quality.table({"houlsby": [run, {**run, "seed": 1, "test": 0.7463}]}, "tweet-sentiment", peers=True)
    assert "| houlsby | 1.650 | 75.13 ± 0.71 |" in text
    assert "75.52 ± 0.84 (adapters) | -0.39 |" in text


@pytest.mark.parametrize("argv", [["--arms", "nope"], ["--seeds", "x"], ["--data", "imdb"]])
def test_bad_arguments_are_refused(quality, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        quality.main(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err
