"""``benchmarks/train_step.py --quick``: splice against peft on a tiny Llama (and against ``adapters`` when
``SPLICE_ADAPTERS_PYTHON`` names a Python that has it). Checks the table, the JSON, that the engines train the
same tensors from the same start and agree on the losses; no timing is asserted."""

from __future__ import annotations

import json
import os

import pytest
import transformers

from helpers import benchmark_module


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("train_step.py", "train_step_benchmark")


def lora_qv_count(shape: dict) -> int:
    """LoRA r8 on q and v of every layer: A is [8, hidden], B is [8, out] (v: the key/value width)."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    kv = hidden * shape["num_key_value_heads"] // shape["num_attention_heads"]
    return layers * 8 * (2 * hidden + hidden + kv)


def test_quick_run_prints_ratios_and_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "train_step.json"
    argv = ["--quick", "--batch", "2x16", "--rounds", "1", "--check-steps", "2", "--json", str(out)]
    peers = {"peft"}
    if os.environ.get("SPLICE_ADAPTERS_PYTHON"):
        argv += ["--adapters-python", os.environ["SPLICE_ADAPTERS_PYTHON"]]
        peers.add("adapters")
    result = bench.main(argv)
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert "VmHWM" in result["meta"]["memory"] and result["meta"]["versions"]["peft"] in printed
    rows = result["rows"]
    assert {r["engine"] for r in rows} == {"splice"} | peers
    here = [r for r in rows if r["transformers"] == transformers.__version__]
    assert {(r["engine"], r["method"]) for r in here} == {("splice", "lora"), ("peft", "lora")}  # no Pfeiffer peer
    for r in rows:
        assert r["checkpointing"] == "off" and r["ms"] > 0 and r["peak_mib"] > 0
        assert len(r["losses"]) == 2 and r["losses"][1] < r["losses"][0], "the adapter must train"
        if r["method"] == "lora":
            assert r["trainable"] == lora_qv_count(bench.SIZES["tiny"])
    assert len(result["comparisons"]) == len(rows) - len([r for r in rows if r["engine"] == "splice"])
    for c in result["comparisons"]:
        assert c["params_equal"] and c["loss_gap"] < 1e-4
        mine, peer = (next(r for r in rows if r["engine"] == engine and r["method"] == c["method"]
                           and r["transformers"] == c["transformers"]) for engine in ("splice", c["peer"].split()[0]))
        assert c["time"] == pytest.approx(mine["ms"] / peer["ms"])
        assert c["memory"] == pytest.approx(mine["peak_mib"] / peer["peak_mib"])
    assert [g["method"] for g in result["goals"]][0] == "lora"
    assert "splice ÷" in printed and "goal lora (ckpt off)" in printed
    assert f"peft {result['meta']['versions']['peft']}" in printed


def test_engines_that_compute_different_things_are_refused(bench, monkeypatch):
    """Without splice's initial values copied into peft, the second step's losses differ: the run must stop."""
    args = bench.parse_args(["--quick", "--batch", "2x16", "--check-steps", "2"])
    make = bench.make_model_factory(args, transformers.AutoModelForCausalLM)
    monkeypatch.setattr(bench, "copy_initial_values", lambda source, target: None)
    with pytest.raises(SystemExit, match="do not compute the same thing"):
        bench.time_method("lora", ["splice", "peft"], args, make, bench.make_batch(args))


def test_a_trainable_tensor_outside_the_adapter_is_refused(bench):
    """The counts compared are the adapter's alone: an engine training anything else stops the run."""
    from train_engines import keyed  # on the path once the benchmark is loaded

    args = bench.parse_args(["--quick"])
    base = bench.make_model_factory(args, transformers.AutoModelForCausalLM)()
    trainee = bench.TRAINEES["splice"](base, "lora", 1e-3)
    assert set(keyed(trainee.model, trainee.patterns)) == set(trainee.parameters)
    trainee.model.base.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="lm_head"):
        keyed(trainee.model, trainee.patterns)
