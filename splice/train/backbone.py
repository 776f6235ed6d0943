"""The backbone a task trains on: which Auto class reads it, its tokenizer, and the head a task gets."""

from __future__ import annotations

from collections.abc import Sequence

from ..assets import model_path
from ..heads import Classification, Head, TokenClassification


def load_backbone(name_or_path: str, task: str, quantize: str | None = None, compute_dtype: str = "float32"):
    """(model, tokenizer) for ``task``: a bare encoder/decoder for heads, the causal-LM class for language modelling.

    Classification and tagging use splice heads on ``AutoModel``'s hidden states,
    so the head is saved with the adapter; causal LM keeps the base's own LM head.
    ``quantize`` stores the base in 4 or 8 bits (:mod:`splice.quantize`).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    from ..quantize import load_pretrained

    folder = model_path(name_or_path)
    auto = transformers.AutoModelForCausalLM if task == "causal-lm" else transformers.AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights not used" (the pretraining heads) is expected here
    try:
        model = load_pretrained(auto, str(folder), quantize, compute_dtype, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tokenizer


def task_head(task: str, labels: Sequence[str] | None, layers: int | None, pooling: str,
              dropout: float) -> Head | None:
    """The splice head ``task`` trains: a pooled classifier, a per-token tagger, or none for causal LM."""
    if task == "classification":
        return Classification(num_labels=len(labels), labels=list(labels), layers=layers or 2, pooling=pooling,
                              dropout=dropout)
    if task == "tagging":
        return TokenClassification(num_labels=len(labels), labels=list(labels), layers=layers or 1, dropout=dropout)
    return None
