"""AdapterHub bottleneck adapters (seq_bn, double_seq_bn, par_bn) read as splice Bottlenecks."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

import splice

from helpers import PEERS, assert_same_state, main_output, perturb, state_copy
from tiny_models import tiny_inputs, tiny_model

TOLERANCE = 1e-4
SEQ_BN = {  # adapters 1.3.0's SeqBnConfig defaults (Pfeiffer), as it writes them
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0, "init_weights": "bert",
    "inv_adapter": None, "is_parallel": False, "leave_out": [], "ln_after": False, "ln_before": False,
    "mh_adapter": False, "non_linearity": "relu", "original_ln_after": True, "original_ln_before": True,
    "output_adapter": True, "phm_layer": False, "reduction_factor": 16, "residual_before_ln": True,
    "scaling": 1.0, "stochastic_depth": 0.0, "use_gating": False,
}


@pytest.mark.parametrize("case, model_class", [("adapters_bert_pfeiffer", AutoModel),
                                               ("adapters_llama_pfeiffer", AutoModelForCausalLM)])
def test_peer_fixture_reproduces_output(case, model_class):
    folder = PEERS / case
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(model_class.from_pretrained(folder / "base", attn_implementation="eager").eval())
    assert (main_output(model, inputs) - expected["base_out"]).abs().max() < TOLERANCE
    model.activate(model.load(folder / "adapter"))
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE


def write_adapterhub(folder: Path, model, adapter: str, options: dict, arch: str) -> Path:
    """A splice bottleneck written under AdapterHub's file layout and tensor names."""
    folder.mkdir(parents=True)
    locations = {
        "bert": ("encoder.layer.{}.attention.output.adapters.task", "encoder.layer.{}.output.adapters.task"),
        "llama": ("layers.{}.attention_adapters.adapters.task", "layers.{}.output_adapters.adapters.task"),
    }
    location = locations[arch]
    tensors = {}
    for site, delta in model.adapters[adapter].items():
        prefix = location[site.role.startswith("ffn")].format(site.layer)
        down = "adapter_down.1" if options.get("ln_before") else "adapter_down.0"
        tensors.update({f"{prefix}.{down}.weight": delta.down.weight, f"{prefix}.{down}.bias": delta.down.bias,
                        f"{prefix}.adapter_up.weight": delta.up.weight, f"{prefix}.adapter_up.bias": delta.up.bias})
        if options.get("ln_before"):  # AdapterHub registers the norm twice: as itself and as adapter_down.0
            for p in ("weight", "bias"):
                tensors[f"{prefix}.adapter_norm_before.{p}"] = getattr(delta.ln_before, p)
                tensors[f"{prefix}.adapter_down.0.{p}"] = getattr(delta.ln_before, p).clone()
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / "adapter.safetensors"))
    config = {"config": {**SEQ_BN, **options}, "hidden_size": 32, "model_type": arch, "name": "task",
              "version": "adapters.1.3.0"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("variant, options, config", [
    ("seq_bn", {}, dict(residual_input=True)),
    ("double_seq_bn", {"original_ln_before": False, "mh_adapter": True, "non_linearity": "swish"},
     dict(placement="houlsby", non_linearity="swish")),
    ("par_bn", {"is_parallel": True, "original_ln_before": False, "scaling": 4.0},
     dict(placement="parallel", residual_input=True, scale=4.0)),
    ("ln_before", {"ln_before": True, "non_linearity": "tanh"}, dict(residual_input=True, ln_before=True,
                                                                   non_linearity="tanh")),
])
def test_variants_map_to_the_matching_splice_bottleneck(arch, variant, options, config, tmp_path):
    model = splice.attach(tiny_model(arch))
    model.add("mine", splice.Bottleneck(r=4, **config))
    perturb(model.adapters["mine"], std=0.3)
    folder = write_adapterhub(tmp_path / variant, model, "mine", options, arch)
    name = model.load(folder)
    loaded = model.adapters[name].config
    assert (loaded.residual_input, loaded.placement, loaded.scale) == (
        config.get("residual_input", False), config.get("placement", "pfeiffer"), config.get("scale", 1.0))
    inputs = tiny_inputs(arch, padded=True)
    model.activate("mine")
    expected = main_output(model, inputs)
    model.activate(name)
    assert torch.equal(main_output(model, inputs), expected)


@pytest.mark.parametrize("option, value, words", [
    ("phm_layer", True, ["Compacter", "shared rule"]),  # read by convert/adapters_methods.py; no PHM tensors here
    ("use_gating", True, ["use_gating", "gate"]),
    ("residual_before_ln", False, ["residual_before_ln"]),
    ("original_ln_after", False, ["original_ln_after"]),
    ("scaling", "learned", ["scaling='learned'"]),
    ("non_linearity", "gelu_new", ["gelu_new"]),
    ("frobnicate", 1, ["frobnicate", "unknown"]),
])
def test_options_splice_does_not_implement_are_refused(option, value, words, tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("mine", splice.Bottleneck(r=4, residual_input=True))
    folder = write_adapterhub(tmp_path / "a", model, "mine", {option: value}, "bert")
    before = state_copy(model.base)
    with pytest.raises(splice.CheckpointError) as caught:
        model.load(folder)
    for word in words:
        assert word in str(caught.value)
    assert list(model.adapters) == ["mine"]
    assert_same_state(model.base, before)
