"""LoHa, LoKr, OFT and BOFT: the peer's math, its folders both ways, and splice's contract on top.

The method matrix (test_methods.py) checks identity at start, training, save/load,
merge and gradient checkpointing on every architecture; here: the peer checkpoints
in tests/fixtures/peers, cases generated with the real peft (other options, other
targets, a BERT, a fused GPT-NeoX projection, several butterfly factors), splice ->
peft -> splice round trips, options refused by name, per-row routing, and the
training-time dropouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import splice
from splice import AnatomyError, CheckpointError, ConfigError
from splice.methods.boft import butterfly_order
from splice.methods.lokr import factorization

from helpers import PEERS, main_output, perturb, rows_alone
from helpers import peft_folder as shared_peft_folder
from tiny_models import tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

TOLERANCE = 1e-4


@pytest.mark.parametrize("case", ["peft_llama_loha", "peft_llama_lokr", "peft_llama_oft"])
def test_peer_fixture_reproduces_peft_output(case):
    folder = PEERS / case
    expected = load_file(str(folder / "expected.safetensors"))
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder / "base")).eval()
    name = model.load(folder / "adapter")
    model.activate(name)
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE
    assert (expected["out"] - expected["base_out"]).abs().max() > 100 * TOLERANCE


def _llama(targets=("q_proj", "v_proj", "down_proj")):
    return list(targets)


PEFT_CASES = {
    "llama-loha": ("llama", "lm", lambda: peft.LoHaConfig(r=4, alpha=6, target_modules=_llama())),
    "bert-loha-ffn": ("bert", "base", lambda: peft.LoHaConfig(
        r=2, alpha=3, target_modules=["query", "key", "intermediate.dense", "output.dense"])),
    "neox-fused-loha": ("gpt_neox", "base", lambda: peft.LoHaConfig(r=3, target_modules=["query_key_value"])),
    "llama-lokr": ("llama", "lm", lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=_llama())),
    "llama-lokr-decomposed": ("llama", "lm", lambda: peft.LoKrConfig(
        r=1, alpha=2, decompose_both=True, decompose_factor=4, target_modules=_llama(("up_proj", "o_proj")))),
    "bert-lokr-lycoris": ("bert", "base", lambda: peft.LoKrConfig(r=16, init_weights="lycoris",
                                                                  target_modules=["query", "value"])),
    "llama-oft": ("llama", "lm", lambda: peft.OFTConfig(oft_block_size=8, target_modules=_llama())),
    "bert-oft-blocks-exact": ("bert", "base", lambda: peft.OFTConfig(
        r=4, oft_block_size=0, use_cayley_neumann=False, target_modules=["query", "output.dense"])),
    "llama-oft-share-coft": ("llama", "lm", lambda: peft.OFTConfig(
        oft_block_size=4, block_share=True, coft=True, eps=0.2, num_cayley_neumann_terms=7,
        target_modules=["q_proj", "down_proj"])),
    "llama-oft-adjusted": ("llama", "lm", lambda: peft.OFTConfig(oft_block_size=6, target_modules=["down_proj"])),
    "neox-fused-oft": ("gpt_neox", "base", lambda: peft.OFTConfig(oft_block_size=8,
                                                                  target_modules=["query_key_value"])),
    "llama-boft": ("llama", "lm", lambda: peft.BOFTConfig(boft_block_size=4, target_modules=_llama())),
    "bert-boft-blocks": ("bert", "base", lambda: peft.BOFTConfig(boft_block_size=0, boft_block_num=8,
                                                                 target_modules=["query", "value"])),
    "neox-fused-boft": ("gpt_neox", "base", lambda: peft.BOFTConfig(boft_block_size=8,
                                                                    target_modules=["query_key_value"])),
}


def peft_folder(tmp_path: Path, model_type: str, head: str, config) -> tuple[Path, torch.Tensor]:
    """helpers.peft_folder with the noise these cases were written with (std 0.1, seed 0)."""
    return shared_peft_folder(tmp_path, model_type, head, config, std=0.1, seed=0)


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_written_adapter_gives_peft_outputs_and_round_trips(tmp_path, case):
    model_type, head, make_config = PEFT_CASES[case]
    folder, want = peft_folder(tmp_path, model_type, head, make_config())
    inputs = tiny_inputs(model_type, padded=True)
    model = splice.attach(tiny_model(model_type, head))
    base = main_output(model, inputs)
    name = model.load(folder)
    model.activate(name)
    out = main_output(model, inputs)
    assert (out - want).abs().max() < TOLERANCE
    assert (out - base).abs().max() > 10 * TOLERANCE

    if model_type == "gpt_neox":  # fused: read, but peft holds one update per module
        with pytest.raises(splice.AdapterError, match="fused module"):
            model.save(name, tmp_path / "back", format="peft")
        return
    model.save(name, tmp_path / "back", format="peft")
    again = peft.PeftModel.from_pretrained(tiny_model(model_type, head), tmp_path / "back").eval()
    assert (main_output(again, inputs) - want).abs().max() < TOLERANCE
    fresh = splice.attach(tiny_model(model_type, head))
    fresh.activate(fresh.load(tmp_path / "back"))
    assert (main_output(fresh, inputs) - want).abs().max() < TOLERANCE


class _CPUBlockDiag:
    """peft's CUDA block-diagonal kernel, on the CPU: ``[N, D, H, H]`` -> ``[N, D·H, D·H]``."""

    @staticmethod
    def apply(blocks):
        return torch.stack([torch.block_diag(*factor) for factor in blocks])


@pytest.mark.parametrize("factors,block_size", [(2, 4), (3, 2), (2, 8)])
def test_butterfly_factors_match_peft(tmp_path, monkeypatch, factors, block_size):
    """peft builds m > 1 butterfly factors only with its CUDA extension: stand in for the kernel on the CPU."""
    layer = pytest.importorskip("peft.tuners.boft.layer")
    monkeypatch.setattr(layer, "get_fbd_cuda", lambda: True)
    monkeypatch.setattr(layer, "FastBlockDiag", _CPUBlockDiag)
    config = peft.BOFTConfig(boft_block_size=block_size, boft_n_butterfly_factor=factors,
                             target_modules=["q_proj", "down_proj"])
    folder, want = peft_folder(tmp_path, "llama", "lm", config)
    model = splice.attach(tiny_model("llama", "lm"))
    name = model.load(folder)
    model.activate(name)
    assert model.adapters[name].config.n_butterfly_factor == factors
    assert (main_output(model, tiny_inputs("llama", padded=True)) - want).abs().max() < TOLERANCE


@pytest.mark.parametrize("dimension", [1, 2, 7, 12, 16, 32, 37, 64, 96, 128, 768, 1000])
@pytest.mark.parametrize("factor", [-1, 2, 3, 4, 8, 16])
def test_lokr_factorization_is_peft_s(dimension, factor):
    from peft.tuners.lokr.layer import factorization as peft_factorization

    assert factorization(dimension, factor) == peft_factorization(dimension, factor)


@pytest.mark.parametrize("features,block_num,block_size,factors", [(32, 8, 4, 2), (32, 16, 2, 4), (64, 8, 8, 3)])
def test_butterfly_order_is_peft_s(features, block_num, block_size, factors):
    from peft.tuners.boft.layer import BOFTLayer

    for i in range(factors):
        want = BOFTLayer.block_butterfly_perm(None, features, block_num // 2**i, block_size // 2, factors - 1)
        got = butterfly_order(features, block_num // 2**i, block_size // 2, factors)
        assert torch.equal(got, want)


def _write_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("case,change,named", [
    ("llama-loha", {"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
    ("llama-lokr", {"alpha_pattern": {"q_proj": 2}}, "alpha_pattern"),
    ("llama-oft", {"bias": "oft_only"}, "bias"),
    ("llama-boft", {"some_future_option": 3}, "some_future_option"),
])
def test_options_splice_does_not_compute_are_refused_by_name(tmp_path, case, change, named):
    model_type, head, make_config = PEFT_CASES[case]
    folder, _ = peft_folder(tmp_path, model_type, head, make_config())
    _write_config(folder, **change)
    model = splice.attach(tiny_model(model_type, head))
    with pytest.raises(CheckpointError, match=named):
        model.load(folder)
    assert not model.adapters


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="not both"):
        splice.OFT(block_size=8, r=4)
    with pytest.raises(ConfigError, match="not both"):
        splice.BOFT(block_size=4, block_num=8)
    with pytest.raises(ConfigError, match="LoKr.init"):
        splice.LoKr(init="pissa")
    with pytest.raises(ConfigError, match="rank_dropout"):
        splice.LoHa(rank_dropout=1.5)
    model = splice.attach(tiny_model("llama"))
    with pytest.raises(AnatomyError, match="n_butterfly_factor"):
        model.add("b", splice.BOFT(block_size=4, n_butterfly_factor=5))
    assert not model.adapters


CONFIGS = {
    "loha": lambda: splice.LoHa(r=2, targets=("q", "down")),
    "lokr": lambda: splice.LoKr(r=2, targets=("q", "down")),
    "oft": lambda: splice.OFT(block_size=8, targets=("q", "down")),
    "boft": lambda: splice.BOFT(block_size=4, n_butterfly_factor=2, targets=("q", "down")),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_batch_routes_each_row_through_its_own_method(arch):
    model = splice.attach(tiny_model(arch))
    for seed, (name, make) in enumerate(CONFIGS.items()):
        model.add(name, make())
        perturb(model.adapters[name], seed=seed)
    inputs = tiny_inputs(arch, batch=5, padded=True)
    entries = ["loha", "oft", "__base__", "boft", "lokr"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=entries)[0]
    assert (mixed - rows_alone(model, inputs, entries)).abs().max() < 1e-5


@pytest.mark.parametrize("method", list(CONFIGS))
def test_stacked_with_lora_and_merged_back(method):
    model = splice.attach(tiny_model("llama"))
    model.add("x", CONFIGS[method]())
    model.add("lora", splice.LoRA(r=2, targets=("q", "v")))
    for name in ("x", "lora"):
        perturb(model.adapters[name])
    inputs = tiny_inputs("llama", padded=True)
    model.activate(splice.Stack("x", "lora"))
    stacked = main_output(model, inputs)
    model.activate("x")
    alone = main_output(model, inputs)
    assert (stacked - alone).abs().max() > 1e-4
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    model.merge("x")
    assert (main_output(model, inputs) - alone).abs().max() < 1e-4
    model.unmerge("x")
    assert all((model.base.state_dict()[k] - v).abs().max() < 1e-5 for k, v in before.items())


@pytest.mark.parametrize("config", [
    splice.LoHa(r=2, rank_dropout=0.5, module_dropout=0.5),
    splice.LoKr(r=2, rank_dropout=0.5, rank_dropout_scale=True),
    splice.OFT(block_size=4, module_dropout=0.5),
    splice.BOFT(block_size=4, dropout=0.5),
], ids=["loha", "lokr", "oft", "boft"])
def test_training_time_dropouts_change_training_forwards_only(config):
    torch.manual_seed(0)
    model = splice.attach(tiny_model("llama"))
    model.add("x", config)
    perturb(model.adapters["x"])
    model.activate("x")
    inputs = tiny_inputs("llama")
    model.train_adapter("x")
    draws = [model(**inputs)[0].detach() for _ in range(4)]
    assert any((d - draws[0]).abs().max() > 1e-6 for d in draws[1:])
    model.eval()
    assert torch.equal(main_output(model, inputs), main_output(model, inputs))
