"""Compacter, ReFT and invertible adapters: against AdapterHub's folders, and the contract parts the matrix
(test_methods.py) does not reach: ReFT's positions under padding, PHM arithmetic, the coupling's inverse."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

import splice
from splice.errors import CheckpointError, ConfigError
from splice.methods.compacter import PHMLinear

from helpers import PEERS, main_output
from tiny_models import tiny_inputs, tiny_model

TOLERANCE = 1e-4


@pytest.mark.parametrize("case, model_class", [("adapters_llama_noreft", AutoModelForCausalLM),
                                               ("adapters_bert_seqbn_inv", AutoModel)])
def test_peer_fixture_reproduces_output(case, model_class):
    folder = PEERS / case
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(model_class.from_pretrained(folder / "base", attn_implementation="eager").eval())
    model.activate(model.load(folder / "adapter"))
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE


def test_compacter_folder_without_its_shared_rule_is_refused_saying_why(tmp_path):
    folder = PEERS / "adapters_bert_compacter"
    model = splice.attach(AutoModel.from_pretrained(folder / "base").eval())
    with pytest.raises(CheckpointError, match="shared rule"):
        model.load(folder / "adapter")
    assert not model.adapters


def test_compacter_folder_with_its_shared_rule_reproduces_the_dense_computation(tmp_path):
    """The fixture's layout plus a shared rule (as AdapterHub saves it from a model with a head)."""
    source = PEERS / "adapters_bert_compacter"
    folder = tmp_path / "adapter"
    shutil.copytree(source / "adapter", folder)
    tensors = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    rule = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.2
    torch.save({**tensors, "bert.shared_parameters.task.phm_rule": rule}, folder / "pytorch_adapter.bin")
    model = splice.attach(AutoModel.from_pretrained(source / "base").eval())
    name = model.load(folder)
    config = model.adapters[name].config
    assert isinstance(config, splice.Compacter) and config.placement == "houlsby" and config.phm_dim == 4
    # The same adapter as a dense Bottleneck: H = Σ rule_i ⊗ W_i, written with torch.kron
    dense = splice.Bottleneck(placement="houlsby", roles=("attn", "ffn"), r=8, non_linearity="gelu")
    model.add("dense", dense)
    for site, delta in model.adapters["dense"].items():
        prefix = "encoder.layer.{}.{}adapters.task.".format(site.layer, "attention.output." if site.role == "attn"
                                                             else "output.")
        for ours, theirs in ((delta.down, "adapter_down.0."), (delta.up, "adapter_up.")):
            blocks = torch.bmm(tensors[prefix + theirs + "W_left"], tensors[prefix + theirs + "W_right"])
            h = sum(torch.kron(rule[i], blocks[i]) for i in range(4))
            with torch.no_grad():
                ours.weight.copy_(h.t())
                ours.bias.copy_(tensors[prefix + theirs + "b"])
    expected = load_file(str(source / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model.activate(name)
    phm = main_output(model, inputs)
    model.activate("dense")
    assert (phm - main_output(model, inputs)).abs().max() < 1e-5


def test_phm_layer_matches_kronecker_sum_and_starts_at_zero():
    config = splice.Compacter(r=8, phm_dim=4, phm_rank=2, factorized_phm_rule=True)
    layer = PHMLinear(32, 8, config)
    rule = torch.bmm(layer.phm_rule_left, layer.phm_rule_right)
    blocks = torch.bmm(layer.W_left, layer.W_right)
    expected = sum(torch.kron(rule[i], blocks[i]) for i in range(4))
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), x @ expected + layer.b, atol=1e-6)
    assert PHMLinear(8, 32, config, zero=True).weight.abs().max() == 0


def test_compacter_refuses_shared_parameters_and_indivisible_widths():
    with pytest.raises(ConfigError, match="shared_phm_rule"):
        splice.Compacter(shared_phm_rule=True)
    model = splice.attach(tiny_model("bert"))
    with pytest.raises(ConfigError, match="phm_dim=4 must divide"):
        model.add("c", splice.Compacter(r=6))


def _reft_model(arch="llama", **options):
    model = splice.attach(tiny_model(arch))
    model.add("r", splice.ReFT(kind="noreft", r=4, dropout=0.0, init="random", **options))
    return model


@pytest.mark.parametrize("options", [{"prefix_positions": 2}, {"prefix_positions": 1, "suffix_positions": 2},
                                     {"prefix_positions": 2, "suffix_positions": 2, "tied_weights": True}])
def test_reft_positions_follow_the_real_tokens_with_left_and_right_padding(options):
    model = _reft_model(**options)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    right = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 0, 0]]), "attention_mask": torch.tensor([[1] * 5 + [0] * 2])}
    left = {"input_ids": torch.tensor([[0, 0, 5, 6, 7, 8, 9]]), "attention_mask": torch.tensor([[0] * 2 + [1] * 5])}
    model.activate("r")
    alone = main_output(model, {"input_ids": ids})
    assert torch.allclose(main_output(model, right)[:, :5], alone, atol=1e-5)
    assert torch.allclose(main_output(model, left)[:, 2:], alone, atol=1e-5)
    model.disable()
    assert not torch.allclose(main_output(model, {"input_ids": ids}), alone, atol=1e-3)


def test_reft_changes_only_its_positions_in_the_first_block():
    model = _reft_model(prefix_positions=2, suffix_positions=1, layers=(0,))
    delta = model.adapters["r"].deltas["layers"]["0"]["reft"]
    y = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    changed = (delta(mask, y) != y).any(-1)
    assert changed.tolist() == [[True, True, False, False, False, True], [False, False, True, True, False, True]]
    # a cached decoding step (the mask is longer than the new tokens): only prefix positions among them
    assert torch.equal(delta(torch.ones(2, 7, dtype=torch.long), y[:, :1]), y[:, :1])


def test_reft_rows_routed_per_row_match_each_alone():
    model = _reft_model(prefix_positions=2, suffix_positions=1)
    model.add("other", splice.ReFT(kind="direft", r=2, dropout=0.0, init="random"))
    inputs = tiny_inputs("llama", padded=True)
    names = ["r", "other"][: inputs["input_ids"].shape[0]]
    routed = main_output(model, {**inputs, "adapter_names": names})
    for row, name in enumerate(names):
        model.activate(name)
        alone = main_output(model, inputs)[row]
        mask = inputs["attention_mask"][row].bool()
        assert torch.allclose(routed[row][mask], alone[mask], atol=1e-5)


def test_reft_refuses_bad_options_by_name():
    for options, field in (({"kind": "reft"}, "kind"), ({"prefix_positions": 0, "suffix_positions": 0}, "positions"),
                           ({"non_linearity": "relu"}, "non_linearity")):
        with pytest.raises(ConfigError, match=field):
            splice.ReFT(**options)


@pytest.mark.parametrize("kind", ["nice", "glow"])
def test_invertible_inverse_undoes_it(kind):
    model = splice.attach(tiny_model("bert"))
    model.add("inv", splice.Invertible(kind=kind))
    delta = model.adapters["inv"].deltas["invertible"]
    with torch.no_grad():
        for p in delta.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    e = torch.randn(2, 5, 32)
    y = delta(None, e)
    assert not torch.allclose(y, e)
    assert torch.allclose(delta.inverse(y), e, atol=1e-5)


def test_invertible_glow_folder_reads_into_splice_glow(tmp_path):
    """AdapterHub's GLOW forward cannot run on [batch, tokens, width] (it splits the token axis), so there is no
    peer output to match: the folder's tensors must land in splice's s1/s2 networks unchanged."""
    source = PEERS / "adapters_bert_seqbn_inv"
    folder = tmp_path / "adapter"
    shutil.copytree(source / "adapter", folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"]["inv_adapter"] = "glow"
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    tensors = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    tensors = {k: v for k, v in tensors.items() if "invertible" not in k}
    glow = {"s1.0.weight": (8, 16), "s1.0.bias": (8,), "s1.2.weight": (32, 8), "s1.2.bias": (32,),
            "s2.0.weight": (8, 16), "s2.0.bias": (8,), "s2.2.weight": (32, 8), "s2.2.bias": (32,)}
    glow = {k: torch.randn(shape) * 0.1 for k, shape in glow.items()}
    tensors.update({f"invertible_adapters.task.{k}": v for k, v in glow.items()})
    torch.save(tensors, folder / "pytorch_adapter.bin")
    model = splice.attach(AutoModel.from_pretrained(source / "base").eval())
    name = model.load(folder)
    delta = model.adapters[name].deltas["invertible"].members["invertible"]
    assert delta.kind == "glow"
    assert all(torch.equal(delta.state_dict()[k], v) for k, v in glow.items())


def test_invertible_refuses_the_head_inverse_by_name():
    with pytest.raises(ConfigError, match="inverse_at_head"):
        splice.Invertible(inverse_at_head=True)
