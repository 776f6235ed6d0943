"""How Hugging Face models are *called*: the facts prompt and prefix tuning rewrite.

Prompt and prefix tuning act on the arguments of a call (masks, positions, the
key/value cache) rather than on a sublayer's output, so they need to know how
each model is called. That knowledge lives here and in the layout table; the
mechanism above (``splice.hooks.soft``) speaks only in these terms.
"""

from __future__ import annotations

import inspect
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
    4.57 passes ``query``/``key``/``value``). ``rebuilt``: length-dependent keywords
    the module recomputes when given None (DeBERTa's ``relative_pos``). ``positions``:
    keywords holding the query positions ``arange(T)`` (T5's ``cache_position`` on 4.57).
    The key/value-cache keyword is read from the module's signature instead: it changed
    between releases (:func:`cache_argument`).
    """

    mask: tuple[str | int, ...] = ("attention_mask", "mask")
    hidden: tuple[str, ...] = ("hidden_states",)
    rebuilt: tuple[str, ...] = ()
    positions: tuple[str, ...] = ()


def attend_value(mask: torch.Tensor, visible: bool):
    """The value that lets (or stops) attention in ``mask``'s format: bool, additive float, or 0/1 ints."""
    if mask.dtype == torch.bool:
        return visible
    if mask.is_floating_point():
        return 0.0 if visible else torch.finfo(mask.dtype).min
    return 1 if visible else 0


# The keywords a key/value cache is passed by, newest first. Which one a call takes, by transformers release:
# - 4.57 to 5.23: ``past_key_values`` -- models' ``forward``, ``generate``, attention modules (and outputs'
#   ``.past_key_values``).
# - 5.24 and 5.25: ``cache`` everywhere (outputs' ``.cache`` too). ``past_key_values`` is still accepted, with
#   a FutureWarning (models' ``forward`` drops it in 5.40, ``generate`` in 6.0), but a call given both uses
#   ``cache`` and silently ignores ``past_key_values``. A prefix passed as ``past_key_values`` is therefore lost
#   beside the ``cache`` that ``generate`` passes at every step, and beside the ``cache=None`` that gradient
#   checkpointing sets in each block (5.24 renamed it there too); only its grown mask arrives.
# - every release: GPT-NeoX's attention module takes ``layer_past``.
CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past")


def cache_argument(module: nn.Module) -> str:
    """The keyword ``module``'s forward takes its key/value cache by (see ``CACHE_ARGUMENTS``).

    Read from the signature rather than the release number, so a model that has not moved
    to ``cache`` yet (remote code) keeps its own name; a forward that names none (only
    ``**kwargs``) gets its release's default.
    """
    parameters = inspect.signature(module.forward).parameters
    named = next((name for name in CACHE_ARGUMENTS if name in parameters), None)
    return named or ("cache" if _release() >= (5, 24) else "past_key_values")


def given_cache(kwargs: dict):
    """The key/value cache a call brings, under whichever keyword its caller used (None: it brings none)."""
    return next((kwargs[name] for name in CACHE_ARGUMENTS if kwargs.get(name) is not None), None)


def with_cache(kwargs: dict, name: str, cache) -> dict:
    """``kwargs`` passing ``cache`` as ``name``, without a None under another cache keyword.

    On 5.24+ a call given both ``cache`` and ``past_key_values`` uses the first, so a
    stale ``past_key_values=None`` must not sit beside it (nor trigger a warning).
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in CACHE_ARGUMENTS}
    kwargs[name] = cache
    return kwargs


def _release() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


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
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    return _release()[0] >= 5 or implementation == "eager"


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
