"""The key/value cache of the rows decoding together: left-padded rows that join and leave between steps.

Each row's keys and values sit right-aligned in one ``[rows, kv_heads, width, head_dim]``
tensor per layer (transformers' ``DynamicCache``, which the model appends to in
place at each step); ``mask`` marks the columns a row really holds (its soft
prefix/prompt slots, its prompt, its tokens so far), zeros its left padding. Rows
joining are padded to a common width and concatenated; rows leaving are dropped
and the columns no row holds any more are cut, so the width stays the longest
row's length. Only full-attention caches (``DynamicLayer``) can be padded so;
models with sliding-window or other cache layers are refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import BadRequest


@dataclass
class BatchCache:
    """``cache`` (a transformers cache) and ``mask`` ``[rows, width]`` for the rows of a running batch."""

    cache: object
    mask: torch.Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def select(self, keep: list[int]) -> BatchCache:
        """Only the rows ``keep`` (in that order), without the columns none of them holds."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        held = mask.any(0).nonzero()  # host sync: rows leave between steps, never inside a forward
        start = int(held[0]) if len(held) else mask.shape[1]
        layers = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                  for k, v in layers_of(self.cache)]
        return BatchCache(build(layers), mask[:, start:])

    def crop(self, width: int) -> BatchCache:
        """The first ``width`` columns of every layer (undoing a step that failed halfway through the layers)."""
        return BatchCache(build([(k[:, :, :width], v[:, :, :width]) for k, v in layers_of(self.cache)]),
                          self.mask[:, :width])

    @staticmethod
    def join(parts: list[BatchCache]) -> BatchCache:
        """One batch holding every row of ``parts``, in order, each left-padded to the widest."""
        if len(parts) == 1:
            return parts[0]
        width = max(part.width for part in parts)
        layered = [layers_of(part.cache) for part in parts]
        layers = []
        for depth in range(len(layered[0])):
            keys = torch.cat([_pad(layers[depth][0], width) for layers in layered])
            values = torch.cat([_pad(layers[depth][1], width) for layers in layered])
            layers.append((keys, values))
        mask = torch.cat([torch.nn.functional.pad(part.mask, (width - part.width, 0)) for part in parts])
        return BatchCache(build(layers), mask)

    def repeat(self, copies: int) -> BatchCache:
        """Each row ``copies`` times in a row (``n`` choices sharing one prompt's prefill)."""
        if copies == 1:
            return self
        layers = [(k.repeat_interleave(copies, 0), v.repeat_interleave(copies, 0)) for k, v in layers_of(self.cache)]
        return BatchCache(build(layers), self.mask.repeat_interleave(copies, 0))


def layers_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's ``(keys, values)`` of a transformers cache whose layers all attend to every position."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or ()}) or [type(cache).__name__]
        raise BadRequest(f"Continuous batching pads full-attention caches only; this model's cache holds "
                         f"{', '.join(kinds)}. Start the server with continuous batching off (--no-continuous).")
    return [(layer.keys, layer.values) for layer in layers]


def build(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A ``DynamicCache`` holding ``layers`` (the tensors themselves); the model appends each step's keys and
    values to it.

    ``update`` with the whole tensors would copy each once more (it concatenates them onto an empty one): on a
    loaded CPU core that doubled the time a row joining or leaving takes (SmolLM2, 8 rows of 80 tokens: about
    80 ms a copy). A zero-width ``update`` sets each layer up through the public call, on every release; the
    tensors then go in as ``keys`` and ``values``, the attributes the layer concatenates onto and
    :func:`layers_of` reads."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for depth, (keys, values) in enumerate(layers):
        cache.update(keys[:, :, :0], values[:, :, :0], depth)
        layer = cache.layers[depth]
        layer.keys, layer.values = keys, values
    return cache


def _pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``[rows, heads, w, dim]`` left-padded with zeros to ``width`` columns."""
    return torch.nn.functional.pad(tensor, (0, 0, width - tensor.shape[2], 0))
