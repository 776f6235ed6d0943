"""peft's prompt learning: read and write prompt tuning and prefix tuning adapters.

peft saves one tensor for both, ``prompt_embeddings`` (no ``base_model.model.``
prefix; a ``modules_to_save`` head beside it is named ``base_model.<path>.<param>``):

- ``PROMPT_TUNING``: ``[num_virtual_tokens · num_transformer_submodules, token_dim]``,
  the soft tokens peft prepends to the input embeddings (``token_dim``: the width
  of the token embeddings). ``prompt_tuning_init`` and its text only mattered at
  initialisation. splice's :class:`~splice.PromptTuning` of that length holds the same table.
- ``PREFIX_TUNING``: ``[num_virtual_tokens, num_layers · 2 · token_dim]``. peft's
  ``get_prompt`` views a row as ``[num_layers · 2, num_attention_heads, head_dim]``
  and gives layer ``l`` slot ``2l`` as keys and ``2l + 1`` as values, passed as a
  key/value cache (``[batch, heads, P, head_dim]``). Under grouped-query attention
  peft sets ``num_attention_heads`` to the model's key/value heads and
  ``token_dim`` to ``kv_heads · head_dim``. So a row is ``[k_0 | v_0 | k_1 | v_1 | …]``,
  each head-major: exactly splice's prefix key / value of that layer. With
  ``prefix_projection=True`` peft trains through an MLP but saves its output (the
  plain prefix), as splice does, so the file reads the same.

What peft computes, and where splice differs (measured on the tiny models of the
tests, peft 0.21.2):

- peft returns outputs for the virtual positions too; splice strips them, so
  splice's ``logits`` equal peft's ``logits[:, num_virtual_tokens:]``.
- Position ids: peft passes none, so the model numbers virtual and real slots
  in order, pads included (a prefix cache of length P starts the real tokens at
  P). splice numbers only attended slots. Every row without left padding gets
  the same positions in both (prompt and prefix, every decoder and encoder:
  max |Δ| ≤ 1e-6); a **left-padded row differs** (its real tokens sit after the
  pads in peft, right after the soft tokens in splice: 6e-4 (Llama) to 0.36
  (GPT-2) on the tiny models; OPT numbers positions from the mask and matches).
  Given peft's positions, ``position_ids=arange(T)``, splice reproduces those
  rows exactly. The outputs *at* right-pad positions differ too (splice gives
  masked slots position 1); real tokens do not.
- Prefix tuning on encoders (BERT, RoBERTa, ELECTRA, ...) goes through the same
  cache in peft, and those models then start their absolute positions at P:
  every row differs from splice's encoder prefix (which keeps positions 0..) by
  ~3 on a tiny BERT, so it is refused both ways; so is everything on
  encoder-decoder models (peft's T5 decoder cross-attends to the soft tokens:
  1.5 apart on a tiny T5; and its prefix reaches only the decoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapter import Adapter
from ..errors import AdapterError, CheckpointError
from ..methods import PrefixTuning, PromptTuning
from .options import UNSET, refuse_unknown

if TYPE_CHECKING:
    from ..anatomy import Anatomy

KINDS = ("PROMPT_TUNING", "PREFIX_TUNING")
TENSOR = "prompt_embeddings"
HEAD_PREFIX = "base_model."  # prompt learning wraps the model itself, one level less than LoRA's base_model.model.

# Options that do not change what a loaded adapter computes (bookkeeping, initialisation) or that
# splice checks against the model and the tensor.
_COMMON = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "modules_to_save", "num_virtual_tokens", "token_dim", "num_transformer_submodules",
    "num_attention_heads", "num_layers",
}
_OWN = {
    "PROMPT_TUNING": {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs"},
    # The file holds the prefix itself, the MLP of prefix_projection already applied.
    "PREFIX_TUNING": {"prefix_projection", "encoder_hidden_size", "init_weights"},
}
# peft task types by transformers' auto-class mapping (GPT2LMHeadModel is a causal LM), else by class-name suffix.
_TASKS = (("CAUSAL_LM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "ForCausalLM"),
          ("SEQ_CLS", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "ForSequenceClassification"),
          ("TOKEN_CLS", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "ForTokenClassification"),
          ("QUESTION_ANS", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "ForQuestionAnswering"))
_ENCODER_PREFIX = (
    "peft runs a prefix on an encoder as a key/value cache, and BERT-family encoders then number the real tokens' "
    "absolute positions from num_virtual_tokens, not 0; splice's encoder prefix keeps the positions (every row "
    "differs, by ~3 on a tiny BERT). Only decoder-only models' prefixes convert exactly."
)


# -- reading -----------------------------------------------------------------------------------------


def check_options(anatomy: Anatomy, config: dict[str, Any], source: Path) -> None:
    """Refuse, by name, options and models whose prompt / prefix splice cannot reproduce."""
    kind = config["peft_type"]
    refuse_unknown(config, source, f"peft {kind}", _COMMON | _OWN[kind], off=UNSET)
    count = config.get("num_virtual_tokens")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CheckpointError(f"{source}: num_virtual_tokens must be a positive integer, got {count!r}.")
    submodules = config.get("num_transformer_submodules")
    if submodules is None:  # what peft itself assumes
        submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
    if submodules != 1 or config.get("task_type") == "SEQ_2_SEQ_LM" or anatomy.encoder_decoder:
        what = (f"num_transformer_submodules={submodules} (soft tokens for an encoder and a decoder)"
                if submodules != 1 else "an encoder-decoder model")
        raise CheckpointError(
            f"{source}: {kind} for {what} is not read by splice. On encoder-decoder models peft's prompt stays in the "
            "encoder's output (the decoder cross-attends to it) and its prefix reaches only the decoder, while "
            "splice's prompt conditions the encoder only and its prefix covers both stacks."
        )
    if kind == "PREFIX_TUNING" and not all(anatomy.cached(s.stack) for s in anatomy.prefix_sites()):
        raise CheckpointError(f"{source}: PREFIX_TUNING on model_type {anatomy.model_type!r} is refused: "
                              f"{_ENCODER_PREFIX}")


def read(anatomy: Anatomy, config: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path):
    """A splice config and state from peft's ``prompt_embeddings``; returns (config, state, the other tensors)."""
    rest = {key.removeprefix(HEAD_PREFIX): t for key, t in tensors.items() if key != TENSOR}
    table = tensors.get(TENSOR)
    if table is None:
        raise CheckpointError(f"{source} holds no {TENSOR!r} tensor, which every peft {config['peft_type']} has.")
    count, token_dim = config["num_virtual_tokens"], config.get("token_dim")
    if config["peft_type"] == "PROMPT_TUNING":
        method = PromptTuning(length=count)
        width = anatomy.prompt_site().in_features
        _check_width(token_dim, width, "token embeddings are", source)
        _check_shape(table, (count, width), source)
        return method, {"prompt.embedding": table}, rest
    sites = anatomy.prefix_sites()
    width = sites[0].in_features  # kv_heads * head_dim
    _check_width(token_dim, width, "keys and values (key/value heads x head size) are", source)
    heads = width // anatomy.head_dim
    if config.get("num_attention_heads") not in (None, heads):
        raise CheckpointError(
            f"{source}: num_attention_heads={config['num_attention_heads']}, but this model's attention has {heads} "
            "key/value heads; peft splits each prefix row into num_attention_heads heads, so the file was written "
            "for another model."
        )
    if config.get("num_layers") not in (None, len(sites)):
        raise CheckpointError(f"{source}: num_layers={config['num_layers']}, but this model has {len(sites)} "
                              "self-attention blocks.")
    _check_shape(table, (count, len(sites) * 2 * width), source)
    state = {}
    for index, site in enumerate(sites):  # row = [k_0 | v_0 | k_1 | v_1 | ...]
        state[f"{site.key}.key"] = table[:, 2 * index * width:(2 * index + 1) * width].contiguous()
        state[f"{site.key}.value"] = table[:, (2 * index + 1) * width:(2 * index + 2) * width].contiguous()
    return PrefixTuning(length=count), state, rest


def _check_width(token_dim, width: int, what: str, source: Path) -> None:
    if token_dim is not None and token_dim != width:
        raise CheckpointError(
            f"{source}: token_dim={token_dim}, but this model's {what} {width} wide: the adapter was trained for "
            "another base model."
        )


def _check_shape(table: torch.Tensor, shape: tuple[int, int], source: Path) -> None:
    if tuple(table.shape) != shape:
        raise CheckpointError(
            f"{source}: {TENSOR} has shape {list(table.shape)}, but adapter_config.json and this model make it "
            f"{list(shape)}."
        )


# -- writing -----------------------------------------------------------------------------------------


def export(anatomy: Anatomy, adapter: Adapter) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's config and ``prompt_embeddings`` for a splice prompt or prefix adapter."""
    anatomy, config = anatomy, adapter.config
    kind = "PROMPT_TUNING" if config.method == "prompt" else "PREFIX_TUNING"
    if anatomy.encoder_decoder:
        raise AdapterError(
            f"Cannot write a {config.method} adapter of an encoder-decoder model for peft: peft's prompt stays in "
            "the encoder's output (the decoder cross-attends to it) and its prefix reaches only the decoder, so it "
            "would compute something else. Save it with format='splice'."
        )
    _, state = adapter.export()
    common = {
        "peft_type": kind,
        "task_type": task_type(anatomy.model),
        "num_virtual_tokens": config.length,
        "num_transformer_submodules": 1,
        "num_layers": anatomy.num_layers,
    }
    if kind == "PROMPT_TUNING":
        table = state["prompt.embedding"]
        return {**common, "token_dim": table.shape[1], "num_attention_heads": anatomy.num_heads,
                "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
                "tokenizer_kwargs": None}, {TENSOR: table}
    sites = anatomy.prefix_sites()
    if not all(anatomy.cached(site.stack) for site in sites):
        raise AdapterError(f"Cannot write a prefix adapter of model_type {anatomy.model_type!r} for peft: "
                           f"{_ENCODER_PREFIX} Save it with format='splice'.")
    width = sites[0].in_features
    table = torch.cat([state[f"{site.key}.{part}"] for site in sites for part in ("key", "value")], dim=1)
    return {**common, "token_dim": width, "num_attention_heads": width // anatomy.head_dim,
            "encoder_hidden_size": width, "prefix_projection": False, "init_weights": None}, {TENSOR: table}


def task_type(base: torch.nn.Module) -> str:
    """The peft task type that runs a prompt on this model class (peft's plain PeftModel ignores prompts)."""
    from transformers.models.auto import modeling_auto

    name = type(base).__name__
    for task, mapping, suffix in _TASKS:
        classes = set()
        for value in getattr(modeling_auto, mapping, {}).values():
            classes.update((value,) if isinstance(value, str) else value)
        if name in classes or name.endswith(suffix):
            return task
    return "FEATURE_EXTRACTION"  # base models: peft runs the prompt and returns the model's outputs
