"""Regenerate the AdapterHub prefix-tuning cases in this folder with the real ``adapters`` library.

Not a test: it needs ``adapters`` 1.3.0, which splice does not depend on and which pins
transformers 4.57. It was run as (the wheel unpacked, not installed into .venv)::

    PYTHONPATH=<unpacked adapters-1.3.0>:.venv/transformers-4.57 .venv/bin/python tests/data/adapters_prefix/make.py

Each case holds ``adapter/`` exactly as ``save_adapter`` wrote it, and ``expected.safetensors``
with the inputs (``tiny_inputs(padded=True)``: 2 rows, the last one right-padded),
``base_out`` (the plain model) and ``out`` (the model with the prefix active), both
``last_hidden_state``. The base is ``tiny_model(model_type)`` (seed 0), which builds the same
weights on transformers 4.57 and 5.x; ``base_out`` lets the test check that.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import adapters  # noqa: E402  (the real library, only to regenerate this data)
from adapters import PrefixTuningConfig  # noqa: E402

from tiny_models import tiny_inputs, tiny_model  # noqa: E402


def make(model_type: str, config: PrefixTuningConfig, tag: str) -> None:
    model = tiny_model(model_type)
    inputs = tiny_inputs(model_type, padded=True)
    with torch.no_grad():
        base_out = model(**inputs)[0]
    adapters.init(model)
    model.add_adapter("task", config=config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".prefix_tunings.task." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 or "wte" in name else 0.3))
    model.set_active_adapters("task")
    model.eval()
    with torch.no_grad():
        out = model(**inputs)[0]
    (HERE / tag).mkdir(exist_ok=True)
    model.save_adapter(str(HERE / tag / "adapter"), "task")
    save_file({"base_out": base_out.contiguous(), "out": out.contiguous(), **inputs},
              str(HERE / tag / "expected.safetensors"))
    print(tag, "prefix changes the output by", (out - base_out).abs().max().item())


make("bert", PrefixTuningConfig(prefix_length=3, bottleneck_size=7), "bert_mlp")  # tanh MLP, folded on load
make("distilbert", PrefixTuningConfig(prefix_length=2, flat=True), "distilbert_flat")
