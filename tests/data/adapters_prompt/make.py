"""Regenerate the AdapterHub prompt-tuning case in this folder with the real ``adapters`` library.

Not a test: it needs ``adapters`` 1.3.0, which splice does not depend on and which pins
transformers 4.57. It was run as (the wheel unpacked, not installed into .venv)::

    PYTHONPATH=<unpacked adapters-1.3.0>:.venv/transformers-4.57 .venv/bin/python tests/data/adapters_prompt/make.py

``bert/adapter`` is exactly what ``save_adapter`` wrote; ``bert/expected.safetensors`` holds the
inputs (``tiny_inputs(padded=True)``: 2 rows, the last one right-padded), ``base_out`` (the plain
model) and ``out`` (the model with the prompt active: ``last_hidden_state`` over the prompt's P
positions and then the real ones). The base is ``tiny_model("bert")`` (seed 0).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import adapters  # noqa: E402  (the real library, only to regenerate this data)
from adapters import PromptTuningConfig  # noqa: E402

from tiny_models import tiny_inputs, tiny_model  # noqa: E402


def make(model_type: str, config: PromptTuningConfig, tag: str) -> None:
    model = tiny_model(model_type)
    inputs = tiny_inputs(model_type, padded=True)
    with torch.no_grad():
        base_out = model(**inputs)[0]
    adapters.init(model)
    model.add_adapter("task", config=config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".prompt_tunings.task." in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    model.set_active_adapters("task")
    model.eval()
    with torch.no_grad():
        out = model(**inputs)[0]
    (HERE / tag).mkdir(exist_ok=True)
    model.save_adapter(str(HERE / tag / "adapter"), "task")
    save_file({"base_out": base_out.contiguous(), "out": out.contiguous(), **inputs},
              str(HERE / tag / "expected.safetensors"))
    length = config.prompt_length
    print(tag, out.shape, "prompt changes the real positions by", (out[:, length:] - base_out).abs().max().item())


make("bert", PromptTuningConfig(prompt_length=3), "bert")
