"""Converting a mergeable adapter to a LoRA (``model.to_lora``, ``splice convert --lora-rank``): exact where the
rank allows, the error reported per site and shrinking with the rank, the base untouched, the result a LoRA
that peft serves, and the refusals."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoModelForCausalLM

import splice
from splice import IA3, AdapterError, BitFit, Bottleneck, LoRA
from splice.cli import main
from splice.heads import Classification

from helpers import assert_same_state, main_output, perturb, state_copy
from tiny_models import tiny_inputs, tiny_model

TOLERANCE = 1e-4


def llama_with(config, seed: int = 1):
    model = splice.attach(tiny_model("llama", "lm").eval())
    model.add("x", config)
    perturb(model.adapters["x"], seed=seed, std=0.2)
    return model


def output(model, name):
    model.activate(name)
    return main_output(model, tiny_inputs("llama", padded=True))


def test_ia3_is_exact_at_full_rank_and_the_base_is_untouched():
    model = llama_with(IA3(targets=("k", "v", "down", "up")))
    before = state_copy(model.base)
    full = max(min(site.in_features, site.out_features) for site in model.adapters["x"].sites.values())
    result = model.to_lora("x", "x-lora", full)
    assert_same_state(model.base, before)
    assert isinstance(result.adapter.config, LoRA) and result.adapter.config.r == full
    assert set(result.errors) == set(model.adapters["x"].sites) and result.max_error < 1e-6
    assert (output(model, "x-lora") - output(model, "x")).abs().max() < TOLERANCE


def test_lora_is_exact_at_its_own_rank_and_the_error_falls_with_the_rank():
    model = llama_with(LoRA(r=4, alpha=8, targets=("q", "v", "down")))
    errors = [model.to_lora("x", f"r{rank}", rank) for rank in (1, 2, 3, 4, 6)]
    means = [e.mean_error for e in errors]
    assert all(a > b for a, b in zip(means, means[1:4])) and means[0] > 0.1
    assert errors[3].max_error < 1e-6 and errors[4].max_error < 1e-6  # rank 6 > 4: zero-padded, still exact
    assert (output(model, "r4") - output(model, "x")).abs().max() < TOLERANCE
    assert "rank 2" in errors[1].describe() and "max" in errors[1].describe()


def test_ia3_error_falls_with_the_rank():
    model = llama_with(IA3())
    means = [model.to_lora("x", f"r{rank}", rank).mean_error for rank in (1, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(means, means[1:])) and means[0] > 0.01 and means[-1] < 1e-6


def test_a_fused_projection_converts(tmp_path):
    model = splice.attach(tiny_model("gpt2", "lm").eval())
    model.add("x", LoRA(r=2, targets=("q", "v")))  # q and v are columns of GPT-2's one c_attn
    perturb(model.adapters["x"], seed=2, std=0.2)
    result = model.to_lora("x", "y", 2)
    assert result.max_error < 1e-6
    inputs = tiny_inputs("gpt2", padded=True)
    model.activate("x")
    want = main_output(model, inputs)
    model.activate("y")
    assert (main_output(model, inputs) - want).abs().max() < TOLERANCE


def test_the_head_comes_along():
    inputs = tiny_inputs("bert", padded=True)
    for head in ("classifier", Classification(num_labels=3)):
        model = splice.attach(tiny_model("bert", "classification").eval())
        model.add("x", LoRA(r=2, targets=("q", "v")), head=head)
        perturb(model.adapters["x"], seed=1, std=0.2)
        model.to_lora("x", "y", 2)
        model.activate("x")
        want = main_output(model, inputs)
        model.activate("y")
        assert (main_output(model, inputs) - want).abs().max() < TOLERANCE


def test_the_lora_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_model("llama", "lm").eval()
    model = splice.attach(copy.deepcopy(base))
    model.add("x", IA3(targets=("k", "v", "down")))
    perturb(model.adapters["x"], seed=1, std=0.2)
    model.to_lora("x", "y", 64)
    want = output(model, "x")
    model.save("y", tmp_path / "peft", format="peft")
    served = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    assert (main_output(served, tiny_inputs("llama", padded=True)) - want).abs().max() < TOLERANCE


def test_refusals():
    model = llama_with(LoRA(r=2))
    model.add("bn", Bottleneck())
    for rank in (0, -1, 2.5, True):
        with pytest.raises(AdapterError, match="positive integer"):
            model.to_lora("x", "y", rank)
    with pytest.raises(AdapterError, match="not mergeable"):
        model.to_lora("bn", "y", 4)
    model.merge("x")
    with pytest.raises(AdapterError, match="unmerge"):
        model.to_lora("x", "y", 4)
    model.unmerge("x")
    base = tiny_model("bert")  # BERT's projections have biases (zero at random init): IA3 rescales them too
    perturb(base, seed=5, std=0.1)
    bert = splice.attach(base)
    bert.add("ia3", IA3())
    perturb(bert.adapters["ia3"], seed=1, std=0.2)
    bert.add("bitfit", BitFit())
    perturb(bert.adapters["bitfit"], seed=1, std=0.2)
    for name in ("ia3", "bitfit"):
        with pytest.raises(AdapterError, match="bias"):
            bert.to_lora(name, "y", 4)
    assert "y" not in model.adapters and "y" not in bert.adapters


def test_cli_convert_lora_rank(capsys, tmp_path):
    base_dir = tmp_path / "base"
    tiny_model("llama", "lm").save_pretrained(base_dir)
    model = splice.attach(AutoModelForCausalLM.from_pretrained(base_dir).eval())
    model.add("scales", IA3(targets=("k", "v", "down")))
    perturb(model.adapters["scales"], seed=1, std=0.2)
    model.save("scales", tmp_path / "ia3")
    want = output(model, "scales")

    capsys.readouterr()
    code = main(["convert", str(tmp_path / "ia3"), str(tmp_path / "lora"), "--model", str(base_dir),
                 "--to", "peft", "--lora-rank", "64", "-q"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() == str(tmp_path / "lora")
    assert "LoRA rank 64: relative error max" in err  # the quality is reported even with -q
    again = splice.attach(AutoModelForCausalLM.from_pretrained(base_dir).eval())
    name = again.load(tmp_path / "lora")
    assert isinstance(again.adapters[name].config, LoRA)
    assert (output(again, name) - want).abs().max() < TOLERANCE

    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ia3"), str(tmp_path / "bad"), "--model", str(base_dir),
                 "--to", "peft", "--lora-rank", "0", "-q"]) == 2
    assert "positive integer" in capsys.readouterr().err
