"""``benchmarks/train_step.py --quick``: splice against peft on a tiny Llama (and against ``adapters`` when
``SPLICE_ADAPTERS_PYTHON`` names a Python that has it). Checks the table, the JSON, that the engines train the
same tensors from the same start and agree on the losses; no timing is asserted."""

from __future__ import annotations

import json
import os

import pytest
import torch
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
    assert "splice ÷" in printed and "goal lora on float32 (ckpt off)" in printed
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


def test_quick_quantized_run_compares_qlora_with_peft_and_the_float_base(bench, tmp_path, capsys):
    """``--quantize nf4``: splice and peft's QLoRA on the same NF4 base, then both on the float base; the losses
    agree from a start where LoRA's B is not zero, and the memory saved against the float run is reported."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "train_step.json"
    result = bench.main(["--quick", "--quantize", "nf4", "--batch", "2x16", "--rounds", "1", "--check-steps", "2",
                         "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert result["meta"]["quantize"] == "nf4" and json.loads(out.read_text()) == result
    rows = result["rows"]
    assert {(r["engine"], r["base"]) for r in rows} == {(e, b) for e in ("splice", "peft") for b in ("nf4", "float32")}
    for r in rows:
        assert r["method"] == "lora" and r["trainable"] == lora_qv_count(bench.SIZES["tiny"])
        assert r["ms"] > 0 and r["peak_mib"] > 0 and r["load_mib"] > 0
    on = {(r["engine"], r["base"]): r["losses"] for r in rows}
    assert on["splice", "nf4"] != on["splice", "float32"], "the NF4 base must be the one trained"
    assert {c["base"] for c in result["comparisons"]} == {"nf4", "float32"}
    assert all(c["loss_gap"] < 1e-4 for c in result["comparisons"])
    nf4_goal = next(g for g in result["goals"] if g["base"] == "nf4")
    assert nf4_goal["goal_time"] == 1.05 and "goal lora on nf4" in printed
    assert {(v["engine"], v["base"]) for v in result["savings"]} == {("splice", "nf4"), ("peft", "nf4")}
    weights = {(r["engine"], r["base"]): r["weights_mib"] for r in rows}
    assert weights["splice", "nf4"] < weights["splice", "float32"]
    assert "vs float" in printed


def test_the_adapter_starts_away_from_zero_so_the_first_loss_depends_on_it(bench):
    """A fresh LoRA's B is zero, so equal first losses would only show an equal base: the benchmark fills it."""
    from train_engines import nonzero_start

    args = bench.parse_args(["--quick", "--batch", "2x16"])
    make = bench.make_model_factory(args, transformers.AutoModelForCausalLM)
    batch = bench.make_batch(args)
    plain, started = (bench.TRAINEES["splice"](make(), "lora", 1e-3) for _ in range(2))
    nonzero_start(started)
    assert all(p.any() for p in started.parameters.values())
    with torch.no_grad():
        assert started.model(**batch).loss != plain.model(**batch).loss
