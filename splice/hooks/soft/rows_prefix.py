"""Prefix tuning on a stack without a cache (encoders): placeholder rows in front of the attention's input.

Before a self-attention module runs, ``S`` placeholder rows go in front of its hidden states and mask;
the ``k`` and ``v`` projections' outputs for those rows are replaced by the prefix; the rows are
dropped from its output. Queries and keys keep one length, so every reshape and relative-position
term of the model (DeBERTa, T5) works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...anatomy import Anatomy, Site
from ...anatomy.calls import extend_mask
from ...errors import AdapterError
from ..programs import Program, Soft, first_input


class RowsPrefix:
    """The placeholder-row handlers of one model's uncached prefix sites (``call``, ``projection``, ``strip``)."""

    def __init__(self, anatomy: Anatomy, program: Callable[[str], Program | None],
                 prompt_visible: Callable[[], torch.Tensor | None]):
        self.anatomy, self.program, self.prompt_visible = anatomy, program, prompt_visible
        self._rows: dict[str, tuple[Soft, list[torch.Tensor]]] = {}  # attention calls under way: prefix, inputs

    def call(self, site: Site, args: tuple, kwargs: dict):
        program = self.program(site.key)
        if program is None:
            return None
        spec = self.anatomy.attention_call
        args, kwargs = list(args), dict(kwargs)
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            kwargs[n] for n in spec.hidden if isinstance(kwargs.get(n), torch.Tensor))
        rows, length = hidden.shape[:2]
        soft = program.soft(rows)
        count = soft.length
        self._check_relative(soft)

        def pad(h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h.new_zeros(h.shape[0], count, *h.shape[2:]), h], 1)

        padded = []
        if args and isinstance(args[0], torch.Tensor):
            args[0] = pad(args[0])
            padded.append(args[0])
        for name in spec.hidden:
            if isinstance(kwargs.get(name), torch.Tensor):
                kwargs[name] = pad(kwargs[name])
                padded.append(kwargs[name])
        for where in spec.mask:
            if isinstance(where, int) and where < len(args):
                args[where] = extend_mask(args[where], soft.visible, queries=True)
                break
            if isinstance(where, str) and where in kwargs:
                kwargs[where] = extend_mask(kwargs[where], soft.visible, queries=True)
                break
        for name in spec.rebuilt:
            if name in kwargs:
                kwargs[name] = None
        for name in spec.positions:
            if kwargs.get(name) is not None:
                kwargs[name] = torch.arange(count + length, device=kwargs[name].device)
        self._rows[site.key] = (soft, padded)
        return tuple(args), kwargs

    def _check_relative(self, soft: Soft) -> None:
        """Relative positions see unused prompt slots between a row's prefix and its tokens: refuse that mix.

        Only with a soft prompt in the same call on a relative-position model: the check reads the slots on
        the host (``bool(...any())``), a synchronisation that only that mix pays."""
        prompt = self.prompt_visible()
        if self.anatomy.positions != "relative" or prompt is None or prompt.shape[0] != soft.visible.shape[0]:
            return
        if bool((soft.visible.any(1) & ~prompt.all(1)).any()):
            raise AdapterError(
                f"On model_type {self.anatomy.model_type!r} (relative positions) a row with a prefix cannot share a "
                "batch with rows of a longer soft prompt: the unused prompt slots would sit between its prefix and "
                "its tokens. Batch those rows separately."
            )

    def projection(self, site: Site, index: int, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        entry = self._rows.get(site.key)
        # Only the projection of the padded hidden states (DeBERTa also projects its position embeddings).
        if entry is None or not any(first_input(args, kwargs) is h for h in entry[1]):
            return y
        soft = entry[0]
        return torch.cat([soft.values[index].to(y.dtype), y[:, soft.length:]], 1)

    def strip(self, site: Site, output):
        soft = self._rows.pop(site.key, (None,))[0]
        if soft is None:
            return output
        if isinstance(output, tuple):
            return (output[0][:, soft.length:], *output[1:])
        return output[:, soft.length:]
