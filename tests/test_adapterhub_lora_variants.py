"""AdapterHub's DoRA, VeRA and DvoRA folders (written by adapters 1.3.0, scripts/make_adapterhub_fixtures.py)
reproduce the library's outputs; options splice cannot honour are refused by name."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import splice
from splice.errors import AdapterError, CheckpointError

from helpers import PEERS, main_output

TOLERANCE = 1e-4
CASES = {  # case: (method splice reads it as, its options beyond the fixture's defaults)
    "adapters_bert_dora": (splice.DoRA, dict(r=4, alpha=8, targets=("q", "v"), convention="adapters")),
    "adapters_bert_dora_ffn": (splice.DoRA, dict(r=2, alpha=6, targets=("k", "up", "down"), layers=(1,),
                                                  dropout=0.1, convention="adapters")),
    "adapters_bert_vera": (splice.LoRA, dict(r=4, alpha=8, targets=("q", "v"))),  # trained V_B, V_D: a LoRA
    "adapters_bert_dvora": (splice.DoRA, dict(r=4, alpha=2, targets=("q", "v"), convention="adapters")),
}


def load_case(case: str, folder=None):
    source = PEERS / case
    expected = load_file(str(source / "expected.safetensors"))
    model = splice.attach(AutoModel.from_pretrained(source / "base", attn_implementation="eager").eval())
    name = model.load(folder or source / "adapter")
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    return model, name, inputs, expected


@pytest.mark.parametrize("case", CASES)
def test_peer_folder_reproduces_the_peer_output(case):
    model, name, inputs, expected = load_case(case)
    method, options = CASES[case]
    config = model.adapters[name].config
    assert type(config) is method and {key: getattr(config, key) for key in options} == options
    model.activate(name)
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE


@pytest.mark.parametrize("case", ["adapters_bert_dora", "adapters_bert_dvora"])
def test_adapterhub_dora_merges_and_unmerges_with_its_bias(case):
    """The adapters convention rescales the bias too: merged, the model still computes the peer's output."""
    model, name, inputs, expected = load_case(case)
    base = {key: value.clone() for key, value in model.base.state_dict().items()}
    model.merge(name)
    model.disable()
    assert (main_output(model, inputs) - expected["out"]).abs().max() < TOLERANCE
    model.unmerge(name)
    for key, value in model.base.state_dict().items():
        torch.testing.assert_close(value, base[key], atol=1e-6, rtol=0)


def test_adapterhub_dora_saves_as_splice_and_is_refused_by_peft_by_name(tmp_path):
    model, name, inputs, expected = load_case("adapters_bert_dora")
    model.save(name, tmp_path / "splice")
    again = splice.attach(AutoModel.from_pretrained(PEERS / "adapters_bert_dora" / "base").eval())
    again.activate(again.load(tmp_path / "splice"))
    assert (main_output(again, inputs) - expected["out"]).abs().max() < TOLERANCE
    with pytest.raises(AdapterError, match="convention='adapters'"):
        model.save(name, tmp_path / "peft", format="peft")
    assert not (tmp_path / "peft").exists()


def _edited(tmp_path, case: str, **changes):
    folder = tmp_path / case
    shutil.copytree(PEERS / case / "adapter", folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"].update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("case, changes, message", [
    ("adapters_bert_dora", {"use_gating": True}, "use_gating"),
    ("adapters_bert_vera", {"composition_mode": "scale", "r": 1}, "composition_mode 'scale'"),
    ("adapters_bert_dora", {"use_dora": False}, "lora_A and lora_B"),  # m.weight without use_dora
])
def test_options_splice_does_not_implement_are_refused_by_name(tmp_path, case, changes, message):
    folder = _edited(tmp_path, case, **changes)
    model = splice.attach(AutoModel.from_pretrained(PEERS / case / "base").eval())
    with pytest.raises(CheckpointError, match=message):
        model.load(folder)
    assert not model.adapters


def test_vera_folder_without_its_shared_projections_is_refused_saying_why(tmp_path):
    folder = tmp_path / "vera"
    shutil.copytree(PEERS / "adapters_bert_vera" / "adapter", folder)
    tensors = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    torch.save({k: v for k, v in tensors.items() if "shared_parameters" not in k}, folder / "pytorch_adapter.bin")
    model = splice.attach(AutoModel.from_pretrained(PEERS / "adapters_bert_vera" / "base").eval())
    with pytest.raises(CheckpointError, match="shared projections"):
        model.load(folder)
