"""``splice convert`` loads the base with the class the adapter belongs to (``--model-class auto``, the default),
so a causal LM's adapter is written with the module paths peft (and vLLM) match on a causal LM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from splice.cli import main
from splice.cli.convert import auto_model_class

from helpers import PEERS
from tiny_models import tiny_model

LLAMA = PEERS / "peft_llama_lora"


def convert(capsys, *argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in ["convert", *argv]]) == 0
    return capsys.readouterr().err


def test_a_causal_lm_adapter_round_trips_to_the_keys_peft_matches(capsys, tmp_path):
    """peft -> splice -> peft with no --model-class: the same tensor names, and peft reproduces the output."""
    err = convert(capsys, LLAMA / "adapter", tmp_path / "splice", "--model", LLAMA / "base", "--to", "splice")
    assert "AutoModelForCausalLM" in err  # the peft folder says task_type CAUSAL_LM
    err = convert(capsys, tmp_path / "splice", tmp_path / "peft", "--model", LLAMA / "base", "--to", "peft")
    assert "AutoModelForCausalLM" in err  # the splice folder says nothing: the base's architecture decides
    written = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    original = load_file(str(LLAMA / "adapter" / "adapter_model.safetensors"))
    assert written.keys() == original.keys()
    expected = load_file(str(LLAMA / "expected.safetensors"))
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(LLAMA / "base"), tmp_path / "peft")
    with torch.no_grad():
        out = model.eval()(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    assert (out - expected["out"]).abs().max() < 1e-4


def test_an_explicit_model_class_is_still_honoured(capsys, tmp_path):
    """What every conversion did before: the bare model's paths, which a causal-LM peft load does not match."""
    err = convert(capsys, LLAMA / "adapter", tmp_path / "peft", "--model", LLAMA / "base", "--to", "peft",
                  "--model-class", "base")
    assert "loading AutoModel from" in err
    written = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert all(key.startswith("base_model.model.layers.") for key in written)


def _folder(tmp_path: Path, name: str, meta: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / name).write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A causal LM's folder and a bare model's."""
    root = tmp_path_factory.mktemp("bases")
    shutil.copytree(LLAMA / "base", root / "causal")
    tiny_model("bert").save_pretrained(root / "bare")
    return {"causal": root / "causal", "bare": root / "bare"}


@pytest.mark.parametrize("config_file, meta, base, expected", [
    ("adapter_config.json", {"auto_mapping": {"base_model_class": "LlamaForCausalLM"}}, "bare", "causal-lm"),
    ("adapter_config.json", {"auto_mapping": {"base_model_class": "LlamaModel"}}, "causal", "base"),
    ("adapter_config.json", {"auto_mapping": None, "task_type": "SEQ_CLS"}, "causal", "base"),
    ("adapter_config.json", {"auto_mapping": None, "task_type": None}, "causal", "causal-lm"),
    ("adapter_config.json", {"config": {}, "model_class": "GPT2LMHeadModel"}, "bare", "causal-lm"),
    ("adapter_config.json", {"config": {}, "model_class": "BertModel"}, "causal", "base"),
    ("adapter_config.json", {"config": {}, "model_class": "LlamaAdapterModel"}, "causal", "causal-lm"),  # any task
    ("adapter.json", {"config": {}, "head": {"kind": "classification"}}, "causal", "base"),  # its own head
    ("adapter.json", {"config": {}, "head": None}, "causal", "causal-lm"),
    ("adapter.json", {"config": {}, "head": None}, "bare", "base"),
])
def test_auto_model_class_reads_the_folder_then_the_base(tmp_path, bases, config_file, meta, base, expected):
    assert auto_model_class(_folder(tmp_path, config_file, meta), bases[base]) == expected


def test_auto_model_class_of_a_hub_reference_or_missing_folder_reads_the_base(tmp_path, bases):
    assert auto_model_class(tmp_path / "absent", bases["causal"]) == "causal-lm"
    assert auto_model_class(tmp_path / "absent", tmp_path / "no-config") == "base"
