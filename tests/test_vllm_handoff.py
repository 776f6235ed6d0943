"""LoRA fleets on vLLM: ``splice convert --to peft`` writes what vLLM's LoRA loader reads.

vLLM is not installable here, so these tests restate, from its source (``vllm/lora/peft_helper.py``,
``vllm/lora/utils.py::parse_fine_tuned_lora_name``, ``LoRAModel.from_local_checkpoint``), what it
needs of a folder, and check our output against it:

- ``adapter_config.json`` and ``adapter_model.safetensors`` side by side;
- the config's required keys ``r``, ``lora_alpha``, ``target_modules``; ``bias`` "none" (else the server needs
  bias support), ``modules_to_save`` empty and ``use_dora`` false (vLLM refuses both); ``r`` within the server's
  ``--max-lora-rank``;
- every tensor named ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``, the module path
  the Hugging Face model's own, its last part one of ``target_modules``; A ``[r, in]``, B ``[out, r]``;
- vLLM's scaling, ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``): the base with ``W + scale * B @ A``
  folded in from the files alone gives splice's outputs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import splice
from splice import LoRA
from splice.cli import main

from helpers import perturb
from tiny_models import tiny_inputs, tiny_model

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank choices


def vllm_reads(folder, base: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What vLLM would load from ``folder``: module path -> (A, B); fails the test where vLLM would refuse."""
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert {"r", "lora_alpha", "target_modules"} <= config.keys()
    assert config.get("bias", "none") == "none" and not config.get("modules_to_save")
    assert not config.get("use_dora", False)
    assert config["r"] <= max(VLLM_RANKS)
    targets = config["target_modules"]
    modules = dict(base.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
        parts = key.split(".")
        assert parts[:2] == ["base_model", "model"] and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"), key
        path = ".".join(parts[2:-2])
        assert isinstance(modules.get(path), torch.nn.Linear), f"{path} is not a linear layer of the base"
        assert parts[-3] in targets, f"{parts[-3]} is not in target_modules {targets}"
        pairs.setdefault(path, {})[parts[-2]] = tensor
    loaded = {}
    for path, pair in pairs.items():
        a, b, linear = pair["lora_A"], pair["lora_B"], modules[path]
        assert a.shape == (config["r"], linear.in_features) and b.shape == (linear.out_features, config["r"])
        loaded[path] = (a, b)
    return loaded


@pytest.mark.parametrize("config", [LoRA(r=8, alpha=16, targets="all-linear"),
                                    LoRA(r=4, alpha=8, targets=("q", "v"), use_rslora=True)])
def test_converted_lora_is_what_vllm_loads_and_computes(tmp_path, capsys, config):
    base = tiny_model("llama", "lm")
    base.save_pretrained(tmp_path / "base")
    model = splice.attach(tiny_model("llama", "lm"))
    model.add("task", config)
    perturb(model.adapters["task"], seed=3, std=0.2)
    model.save("task", tmp_path / "splice")
    # --model-class causal-lm: module paths as vLLM names them (model.layers...), not those of the bare AutoModel
    assert main(["convert", str(tmp_path / "splice"), str(tmp_path / "vllm"), "--model", str(tmp_path / "base"),
                 "--model-class", "causal-lm", "--to", "peft", "-q"]) == 0
    capsys.readouterr()

    loaded = vllm_reads(tmp_path / "vllm", base)
    peft_config = json.loads((tmp_path / "vllm" / "adapter_config.json").read_text())
    rank, alpha = peft_config["r"], peft_config["lora_alpha"]
    scale = alpha / (math.sqrt(rank) if peft_config.get("use_rslora") else rank)
    modules = dict(base.named_modules())
    with torch.no_grad():
        for path, (a, b) in loaded.items():
            modules[path].weight += scale * b @ a
        inputs = tiny_inputs("llama")
        folded = base(**inputs).logits
        model.activate("task")
        assert torch.allclose(model(**inputs).logits, folded, atol=1e-5)
