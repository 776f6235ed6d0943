"""Print the table of method costs, computed by ``summary()`` on real-sized configs.

The models are built on PyTorch's meta device (shapes only, no memory), so this
runs in seconds: ``python scripts/method_costs.py``. A test checks that the methods
page of the documentation (docs/methods/index.md) holds exactly this output.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

import splice

BASES = {
    "BERT-base": lambda: BertModel(BertConfig()),  # hidden 768, 12 layers, FFN 3072
    "Llama-7B": lambda: LlamaModel(LlamaConfig(  # hidden 4096, 32 layers, FFN 11008
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)),
}
METHODS = {
    "Bottleneck, Pfeiffer, reduction 16": splice.Bottleneck(),
    "Bottleneck, Houlsby, reduction 16": splice.Bottleneck(placement="houlsby"),
    "Bottleneck, parallel, reduction 16": splice.Bottleneck(placement="parallel"),
    "LoRA r=8 on q, v": splice.LoRA(r=8, alpha=16),
    "LoRA r=16, all linear": splice.LoRA(r=16, alpha=32, targets="all-linear"),
    "IA³ on k, v, FFN": splice.IA3(),
    "BitFit, all linear": splice.BitFit(),
    "Prompt tuning, 20 tokens": splice.PromptTuning(length=20),
    "Prefix tuning, 10 tokens": splice.PrefixTuning(length=10),
    "MAM (prefix 30 + parallel adapter)": splice.presets.mam(),
}


def table() -> str:
    costs: dict[str, list[str]] = {label: [] for label in METHODS}
    for build in BASES.values():
        with torch.device("meta"):
            model = splice.attach(build())
        for label, config in METHODS.items():
            model.add("a", config)
            row = model.summary(print_table=False).rows[0]
            costs[label].append(f"{row.parameters:,} ({row.percent_of_base:.3f} %, {row.megabytes:.2f} MB)")
            model.delete("a")
    lines = ["| method | " + " | ".join(BASES) + " |", "|---|" + "---|" * len(BASES)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in costs.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
