"""Regenerate the AdapterHub prefix- and prompt-tuning cases in this folder with the real ``adapters`` library.

    PYTHONPATH=<unpacked adapters-1.3.0>:.venv/transformers-4.57 .venv/bin/python tests/data/make_adapterhub.py

Each case (``adapters_prefix/<tag>``, ``adapters_prompt/<tag>``) holds ``adapter/`` exactly as
``save_adapter`` wrote it, and ``expected.safetensors`` with the inputs (``tiny_inputs(padded=True)``:
2 rows, the last one right-padded), ``base_out`` (the plain model) and ``out`` (the model with the
adapter active), both ``last_hidden_state``; for prompt tuning ``out`` covers the prompt's P positions,
then the real ones. The base is ``tiny_model(model_type)`` (seed 0), which builds the same weights on
transformers 4.57 and 5.x; ``base_out`` lets the tests check that.
"""

import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import adapters  # noqa: E402  (the real library, only to regenerate this data)
from adapters import PrefixTuningConfig, PromptTuningConfig  # noqa: E402

from tiny_models import tiny_inputs, tiny_model  # noqa: E402


def make(folder: str, tag: str, model_type: str, config, marker: str, scale: Callable[[str, torch.Tensor], float]):
    """Train-free case: the adapter's tensors (names containing ``marker``) drawn at random, times ``scale``."""
    model = tiny_model(model_type)
    inputs = tiny_inputs(model_type, padded=True)
    with torch.no_grad():
        base_out = model(**inputs)[0]
    adapters.init(model)
    model.add_adapter("task", config=config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if marker in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale(name, p))
    model.set_active_adapters("task")
    model.eval()
    with torch.no_grad():
        out = model(**inputs)[0]
    target = HERE / folder / tag
    target.mkdir(parents=True, exist_ok=True)
    model.save_adapter(str(target / "adapter"), "task")
    expected = {"base_out": base_out.contiguous(), "out": out.contiguous(), **inputs}
    save_file(expected, str(target / "expected.safetensors"))
    print(folder, tag, "output shape", tuple(out.shape), "base shape", tuple(base_out.shape))


def prefix_scale(name: str, p: torch.Tensor) -> float:
    return 0.5 if p.dim() == 1 or "wte" in name else 0.3


make("adapters_prefix", "bert_mlp", "bert", PrefixTuningConfig(prefix_length=3, bottleneck_size=7),  # tanh MLP
     ".prefix_tunings.task.", prefix_scale)
make("adapters_prefix", "distilbert_flat", "distilbert", PrefixTuningConfig(prefix_length=2, flat=True),
     ".prefix_tunings.task.", prefix_scale)
make("adapters_prompt", "bert", "bert", PromptTuningConfig(prompt_length=3), ".prompt_tunings.task.", lambda n, p: 1.0)
