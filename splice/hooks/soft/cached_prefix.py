"""Prefix tuning on a cached stack (decoders, T5's decoder): the prefix goes in as a pre-filled cache.

Before the model runs, a cache scoped to this call and pre-filled with every layer's prefix keys and
values (``[B, kv_heads, S, head_dim]``, so grouped-query attention needs nothing special) is passed
as the model's cache argument (``past_key_values`` up to transformers 5.23, ``cache`` from 5.24: read
from the model's signature, see :func:`splice.anatomy.calls.cache_argument`), with the mask grown by
``S`` slots and mask-derived position ids. Gradient checkpointing drops the cache inside each block;
the self-attention module then gets a one-layer cache rebuilt from the parameters (so recomputation
is idempotent). A call that already brings a cache (a decoding step) gets no prefix: it was added
when the cache was started.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...anatomy import Anatomy, Site
from ...anatomy.calls import given_cache, prefix_cache, with_cache
from ...errors import AdapterError
from ..programs import Program, Soft
from .calls import continues, set_positions


class CachedPrefix:
    """The prefix handlers of a model's cached stacks: ``call`` before the model, ``reinject`` before each
    attention module whose cache gradient checkpointing dropped."""

    def __init__(self, anatomy: Anatomy, cache_name: str, program: Callable[[str], Program | None]):
        self.anatomy, self.cache_name, self.program = anatomy, cache_name, program
        self.sites: list[Site] = []  # prefix sites of cached stacks, in layer order
        self.injected = False  # this forward passed a prefix cache: rebuild it where checkpointing drops it

    def add(self, site: Site) -> None:
        self.sites = sorted([*self.sites, site], key=lambda s: (s.stack, s.layer))

    def active(self) -> list[tuple[Site, Program]]:
        """The sites whose prefix the plan runs now, with their programs."""
        return [(site, program) for site in self.sites if (program := self.program(site.key)) is not None]

    def call(self, args: tuple, kwargs: dict):
        """Pass the prefix cache and grow the mask. An encoder-decoder's decoder without a mask gets one only
        when its rows' prefixes differ in length, which ``bool(visible.all())`` reads on the host once per call."""
        self.injected = False
        layers = self.active()
        if not layers or continues(kwargs):
            return None
        rows, length, device = self._decoder_shape(args, kwargs)
        entries, visible = self.entries(layers, rows)
        kwargs = with_cache(kwargs, self.cache_name, prefix_cache(entries, self.anatomy.encoder_decoder))
        name = self.anatomy.layout.decoder_mask
        mask = kwargs.get(name)
        if mask is None and (not self.anatomy.encoder_decoder or not bool(visible.all())):
            mask = torch.ones(rows, length, dtype=torch.long, device=device)
        if mask is not None:
            kwargs[name] = torch.cat([visible.to(device=mask.device, dtype=mask.dtype), mask], 1)
            set_positions(self.anatomy, kwargs, visible, kwargs[name], length, False, "prefixes")
        self.injected = True
        return args, kwargs

    def entries(self, layers, rows: int):
        """Per-layer ``(layer, keys, values)`` in cache layout, and the slots each row uses."""
        entries, visible = [], None
        for site, program in layers:
            soft = program.soft(rows)
            entries.append((site.layer, *self._heads(soft)))
            visible = soft.visible if visible is None else visible  # one prefix length at every layer
        return entries, visible

    def _heads(self, soft: Soft) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, kv_heads * head_dim]`` keys and values as ``[B, kv_heads, S, head_dim]``."""
        head_dim = self.anatomy.head_dim
        return tuple(t.reshape(*t.shape[:2], -1, head_dim).transpose(1, 2) for t in soft.values)

    def _decoder_shape(self, args: tuple, kwargs: dict) -> tuple[int, int, torch.device]:
        for name in self.anatomy.layout.decoder_inputs:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                return value.shape[0], value.shape[1], value.device
        if args and isinstance(args[0], torch.Tensor) and not self.anatomy.encoder_decoder:
            return args[0].shape[0], args[0].shape[1], args[0].device
        raise AdapterError(
            f"A prefix adapter needs the decoder's inputs to size its slots: pass one of "
            f"{', '.join(self.anatomy.layout.decoder_inputs)} by keyword."
        )

    def reinject(self, site: Site, name: str, args: tuple, kwargs: dict):
        """Gradient checkpointing sets the cache to None inside each block: give this layer its prefix.

        ``name``: the attention module's cache keyword, the one the checkpointed block set to None.
        """
        program = self.program(site.key)
        if not self.injected or program is None or given_cache(kwargs) is not None:
            return None
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        keys, values = self._heads(program.soft(rows))
        return args, with_cache(kwargs, name, prefix_cache([(site.layer, keys, values)], self.anatomy.encoder_decoder))
