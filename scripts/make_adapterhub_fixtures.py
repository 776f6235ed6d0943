"""Write the AdapterHub DoRA and VeRA peer cases under tests/fixtures/peers/ with the real ``adapters`` library.

``adapters`` 1.3.0 pins transformers 4.57, so it runs outside the project's environment:

    .venv/bin/pip install --no-deps --target /tmp/ah adapters==1.3.0
    PYTHONPATH=/tmp/ah:$PWD/.venv/transformers-4.57 .venv/bin/python scripts/make_adapterhub_fixtures.py

Each case is laid out as the others in tests/fixtures/peers/ (see its README): ``base/`` (a tiny BERT,
``BertModel``), ``adapter/`` as ``adapters`` saved it, ``expected.safetensors`` (inputs, ``base_out``, ``out``)
and ``case.json``. The adapter runs in ``BertAdapterModel`` (a model with a prediction-head wrapper): from a bare
``BertModel`` ``adapters`` does not save VeRA's shared projections (its save filter needs
``.shared_parameters.<name>.``). Its weights are drawn at random so that the adapter really changes the output:
every parameter, DoRA's magnitude and VeRA's full ``[r, r]`` / ``[out, out]`` scaling matrices included (the
library trains them as full matrices, though they start diagonal).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import BertAdapterModel, DoRAConfig, DvoRAConfig, VeraConfig
from safetensors.torch import save_file

PEERS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "peers"
BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=0)

CASES = {
    # alpha != r: AdapterHub's DoRA takes the norm of W + B·A without the scaling, and rescales the bias too
    "adapters_bert_dora": DoRAConfig(r=4, alpha=8, attn_matrices=["q", "v"]),
    # the shared projections are sized by the first adapted module, so AdapterHub's VeRA needs every adapted
    # module of one shape (q and v here)
    "adapters_bert_vera": VeraConfig(r=4, alpha=8, attn_matrices=["q", "v"]),
    # the other options beside them: DoRA on k and both FFN projections of layer 1 only, with dropout; DvoRA
    "adapters_bert_dora_ffn": DoRAConfig(r=2, alpha=6, attn_matrices=["k"], intermediate_lora=True, output_lora=True,
                                         leave_out=[0], dropout=0.1),
    "adapters_bert_dvora": DvoRAConfig(r=4, alpha=2, attn_matrices=["q", "v"]),
}


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[2, 5:], mask[2, 5:] = 0, 0  # the last row padded
    return {"input_ids": ids, "attention_mask": mask}


def write_case(name: str, config) -> None:
    folder = PEERS / name
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    base = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    base.save_pretrained(folder / "base")
    model = BertAdapterModel.from_pretrained(folder / "base").eval()
    batch = inputs()
    with torch.no_grad():
        base_out = model(**batch).last_hidden_state  # BertAdapterModel without a head: the base's output
    model.add_adapter("task", config=config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if ".loras.task." not in key and ".shared_parameters.task." not in key:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if key.endswith(".m.weight"):  # DoRA's magnitude starts at ‖W‖: move it by a fifth
                parameter.mul_(1 + 0.2 * noise)
            elif ".shared_parameters." not in key:  # the shared projections keep their random start
                parameter.copy_(0.2 * noise)
    model.set_active_adapters("task")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    model.save_adapter(str(folder / "adapter"), "task", with_head=False)
    save_file({**batch, "base_out": base_out.contiguous(), "out": out.contiguous()},
              str(folder / "expected.safetensors"))
    case = {"model": "bert", "library": f"adapters {adapters.__version__}",
            "model_class": "BertAdapterModel (no head); base/ is its BertModel", "config": repr(config)}
    (folder / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    print(f"{name}: |out - base_out| = {(out - base_out).abs().max():.3f}", file=sys.stderr)


if __name__ == "__main__":
    for case_name, case_config in CASES.items():
        write_case(case_name, case_config)
