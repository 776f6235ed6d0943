"""How Hugging Face models are *called*: the facts prompt and prefix tuning rewrite.

Prompt and prefix tuning act on the arguments of a call (masks, positions, the
key/value cache) rather than on a sublayer's output, so they need to know how
each model is called. That knowledge lives here and in the layout table; the
mechanism above (``splice.soft``) speaks only in these terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

POSITIONS = ("explicit", "derived", "relative", "fixed")


@dataclass(frozen=True)
class AttentionCall:
    """How a block's self-attention module is called.

    ``mask``: where the attention mask arrives, as keyword names or positional
    indices (first present wins; DeBERTa passes it second, positionally).
    ``hidden``: keywords carrying hidden states besides ``args[0]`` (DistilBERT on
    4.57 passes ``query``/``key``/``value``). ``cache``: the key/value-cache keyword
    (GPT-NeoX: ``layer_past``). ``rebuilt``: length-dependent keywords the module
    recomputes when given None (DeBERTa's ``relative_pos``). ``positions``: keywords
    holding the query positions ``arange(T)`` (T5's ``cache_position`` on 4.57).
    """

    mask: tuple[str | int, ...] = ("attention_mask", "mask")
    hidden: tuple[str, ...] = ("hidden_states",)
    cache: str = "past_key_values"
    rebuilt: tuple[str, ...] = ()
    positions: tuple[str, ...] = ()


def attend_value(mask: torch.Tensor, visible: bool):
    """The value that lets (or stops) attention in ``mask``'s format: bool, additive float, or 0/1 ints."""
    if mask.dtype == torch.bool:
        return visible
    if mask.is_floating_point():
        return 0.0 if visible else torch.finfo(mask.dtype).min
    return 1 if visible else 0


def extend_mask(mask: torch.Tensor | None, visible: torch.Tensor, queries: bool = False) -> torch.Tensor | None:
    """``mask`` with ``S`` key slots in front (``visible [B, S]`` says which a row may attend to).

    Masks come as 2-D keep-masks ``[B, T]`` or 4-D ``[B or 1, 1, Tq, Tk]`` in any of
    the three formats. With ``queries``, ``S`` query rows are prepended too (they
    attend everywhere, so they never produce NaNs; their outputs are dropped).
    """
    if mask is None:
        return None
    block, attend = attend_value(mask, False), attend_value(mask, True)
    slots = torch.where(visible.to(mask.device), torch.tensor(attend, dtype=mask.dtype, device=mask.device),
                        torch.tensor(block, dtype=mask.dtype, device=mask.device))
    if mask.dim() == 2:
        return torch.cat([slots, mask], 1)
    rows, count = visible.shape
    mask = mask.expand(rows, *mask.shape[1:]) if mask.shape[0] == 1 and rows > 1 else mask
    keys = slots[:, None, None, :].expand(rows, mask.shape[1], mask.shape[2], count)
    mask = torch.cat([keys, mask], 3)
    if queries and mask.shape[2] > 1:
        mask = torch.cat([mask.new_full((rows, mask.shape[1], count, mask.shape[3]), attend), mask], 2)
    return mask


def mask_follows_embeddings(model: nn.Module) -> bool:
    """Whether the model sizes its attention mask from the embedding block's output.

    transformers 5 builds it from the embeddings' length (so rows added there can be
    given mask slots at the call); 4.x with SDPA sizes it from the input ids instead
    and would mismatch. 4.x with eager attention uses the 2-D mask as given.
    """
    import transformers

    major = int(transformers.__version__.split(".")[0])
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    return major >= 5 or implementation == "eager"


def positions_from_mask(mask: torch.Tensor, last: int) -> torch.Tensor:
    """Position ids that count only attended slots (left padding and masked slots take no position)."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return positions[:, -last:]


def prefix_cache(layers: list[tuple[int, torch.Tensor, torch.Tensor]], encoder_decoder: bool):
    """A fresh key/value cache holding ``(layer, keys, values)`` (each ``[B, kv_heads, S, head_dim]``).

    It is scoped to one call: the model appends the call's own keys and values to it.
    Encoder-decoder models keep self- and cross-attention caches apart.
    """
    from transformers import DynamicCache, EncoderDecoderCache

    cache = DynamicCache()
    for layer, keys, values in layers:
        cache.update(keys, values, layer)
    return EncoderDecoderCache(cache, DynamicCache()) if encoder_decoder else cache


def strip_positions(output, count: int, length: int):
    """``output`` without its first ``count`` sequence positions (of ``length``), where it has them.

    Covers what a forward returns per position: ``last_hidden_state``, token
    ``logits`` and the ``hidden_states`` tuple (ModelOutput), or the first
    element of a plain tuple.
    """

    def cut(t):
        if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == length:
            return t[:, count:]
        return t

    if isinstance(output, tuple) and not hasattr(output, "keys"):
        return (cut(output[0]), *output[1:])
    for name in ("last_hidden_state", "logits"):
        if output.get(name) is not None:
            output[name] = cut(output[name])
    if output.get("hidden_states") is not None:
        output["hidden_states"] = tuple(cut(h) for h in output["hidden_states"])
    return output


def token_embedding(module: nn.Module) -> nn.Embedding | None:
    """The token-embedding table a module's ``input_ids`` go through (None: it takes no token ids)."""
    getter = getattr(module, "get_input_embeddings", None)
    try:
        embedding = getter() if getter is not None else None
    except NotImplementedError:
        return None
    return embedding if isinstance(embedding, nn.Embedding) else None
