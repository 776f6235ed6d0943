"""``generate`` with soft tokens: they go in a cache up front, and ``generate`` gets placeholder ids for them.

``generate`` gets ``S`` placeholder ids (plus the grown mask) standing for the soft tokens, which it
skips by the cache length; they are removed from the returned sequences. Passing only the real ids
is silently wrong on transformers 4.57.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...anatomy import Anatomy
from ...anatomy.calls import prefix_cache
from ...errors import AdapterError
from ..programs import Program
from .cached_prefix import CachedPrefix
from .calls import PROMPT_KEY, set_positions
from .prompt import Prompt


class Generate:
    """``base.generate`` under the plan's prompt and cached prefixes."""

    def __init__(self, anatomy: Anatomy, program: Callable[[str], Program | None], prefix: CachedPrefix,
                 prompt: Callable[[], Prompt | None]):
        self.anatomy, self.program, self.prefix, self._prompt = anatomy, program, prefix, prompt

    @property
    def prompt(self) -> Prompt | None:
        return self._prompt()

    def __call__(self, base: nn.Module, args: tuple, kwargs: dict):
        """``base.generate`` with the setup's soft tokens in a cache up front, stood for by placeholders."""
        layers = self.prefix.active()
        prompt = self.program(PROMPT_KEY) if self.prompt is not None and self.prompt.module is base else None
        if not layers and prompt is None:
            return base.generate(*args, **kwargs)
        if args and isinstance(args[0], torch.Tensor):
            kwargs, args = {**kwargs, "input_ids": args[0]}, args[1:]
        if self.anatomy.encoder_decoder:
            return self._generate_seq2seq(base, layers, args, kwargs)
        ids = kwargs.pop("input_ids", None)
        if ids is None:
            raise AdapterError("generate() with a prompt or prefix adapter needs input_ids.")
        rows, device = ids.shape[0], ids.device
        mask = kwargs.pop("attention_mask", None)
        mask = torch.ones_like(ids) if mask is None else mask
        from transformers import DynamicCache

        cache, visible = DynamicCache(), torch.zeros(rows, 0, dtype=torch.bool, device=device)
        with torch.no_grad():
            if layers:
                entries, visible = self.prefix.entries(layers, rows)
                cache = prefix_cache(entries, False)
            if prompt is not None:  # run the soft prompt once: its keys and values join the cache
                soft = prompt.soft(rows)
                visible = torch.cat([visible, soft.visible.to(device)], 1)
                call = {"inputs_embeds": soft.values[0], "attention_mask": visible.long(),
                        self.prefix.cache_name: cache, "use_cache": True}
                set_positions(self.anatomy, call, visible, visible, soft.length, True, "soft prompts")
                base(**call)  # appends to ``cache`` in place (every release's Cache.update does)
        _expand(cache, base, kwargs)
        count = visible.shape[1]
        pad = kwargs.get("pad_token_id", getattr(base.generation_config, "pad_token_id", None))
        placeholders = torch.full((rows, count), 0 if pad is None else int(pad), dtype=ids.dtype, device=device)
        out = base.generate(*args, input_ids=torch.cat([placeholders, ids], 1),
                            attention_mask=torch.cat([visible.to(mask.dtype), mask], 1),
                            **{self.prefix.cache_name: cache}, **kwargs)
        return _drop_columns(out, count)

    def _generate_seq2seq(self, base: nn.Module, layers, args: tuple, kwargs: dict):
        """Encoder-decoder: the encoder's soft tokens work inside generate; the decoder's prefix needs placeholders."""
        if not layers:
            return base.generate(*args, **kwargs)
        source = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        rows, device = source.shape[0], source.device
        start = base.generation_config.decoder_start_token_id
        start = base.config.decoder_start_token_id if start is None else start
        decoder = kwargs.pop("decoder_input_ids", None)
        decoder = torch.full((rows, 1), int(start), dtype=torch.long, device=device) if decoder is None else decoder
        with torch.no_grad():
            entries, visible = self.prefix.entries(layers, rows)
        count = visible.shape[1]
        decoder_mask = kwargs.pop("decoder_attention_mask", None)
        decoder_mask = torch.ones_like(decoder) if decoder_mask is None else decoder_mask
        cache = prefix_cache(entries, True)
        _expand(cache, base, kwargs)
        out = base.generate(
            *args, **kwargs,
            decoder_input_ids=torch.cat([decoder.new_full((rows, count), int(start)), decoder], 1),
            decoder_attention_mask=torch.cat([visible.to(decoder_mask.dtype), decoder_mask], 1),
            **{self.prefix.cache_name: cache},
        )
        return _drop_columns(out, count)


def _expand(cache, base: nn.Module, kwargs: dict) -> None:
    """Repeat the cache's rows as ``generate`` repeats the inputs' (one per beam, or per returned sequence)."""
    config = kwargs.get("generation_config") or base.generation_config
    beams = kwargs.get("num_beams", config.num_beams) or 1
    copies = beams if beams > 1 else kwargs.get("num_return_sequences", config.num_return_sequences) or 1
    if copies > 1:
        cache.batch_repeat_interleave(copies)


def _drop_columns(out, count: int):
    """Generated sequences without the ``count`` placeholder columns in front."""
    if isinstance(out, torch.Tensor):
        return out[:, count:]
    out.sequences = out.sequences[:, count:]
    return out
