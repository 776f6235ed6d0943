"""Prediction heads that belong to an adapter.

A head turns the backbone's final hidden states into task outputs, so one bare
``AutoModel`` backbone serves many tasks: ``model.add("sst2", splice.Bottleneck(),
head=splice.heads.Classification(num_labels=2, labels=["neg", "pos"]))``. The
head is saved and loaded with its adapter and switches with it; under per-row
routing each row gets its own task's head.

Contract of a head (a small ``nn.Module``):

- ``label_names``: the batch keys holding its targets (popped before the backbone runs);
- ``prepare_inputs(inputs)``: reshape the batch for the backbone if needed (multiple choice);
- ``forward(hidden, attention_mask, inputs)``: logits from ``hidden`` ``[rows, tokens, hidden]``;
- ``loss(logits, targets)``: the training loss from the popped targets;
- ``to_dict()`` / :func:`head_from_dict`: JSON round trip (``kind`` + constructor options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from transformers.utils import ModelOutput

from .errors import ConfigError


class Head(nn.Module):
    """Base class of splice's prediction heads."""

    kind: ClassVar[str] = ""
    label_names: ClassVar[tuple[str, ...]] = ("labels",)

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                inputs: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


HEADS: dict[str, type[Head]] = {}


def head_from_dict(data: Mapping[str, Any]) -> Head:
    """Rebuild a head from its ``to_dict()`` form."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in HEADS:
        raise ConfigError(f"Unknown head kind {kind!r}; splice knows {', '.join(sorted(HEADS)) or 'none'}.")
    options = {k: v for k, v in data.items() if k != "kind"}
    return HEADS[kind](**options)


@dataclass
class HeadOutput(ModelOutput):
    """What an adapted model returns when a splice head is active (a ``ModelOutput``, so the Trainer reads it).

    ``logits`` is one tensor when every row's head gives the same shape, else a
    list with one tensor per row (per-row routing over heads of different tasks).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | list[torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def apply_heads(base: nn.Module, groups: list[tuple[Head, torch.Tensor | None]],
                args: tuple, kwargs: dict[str, Any]) -> HeadOutput:
    """Run ``base`` once, then each head on its rows (``None``: all rows) and its loss if targets were given."""
    if len(groups) == 1:
        kwargs = groups[0][0].prepare_inputs(dict(kwargs))
    names = {name for head, _ in groups for name in head.label_names}
    targets = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
    wants_hidden = kwargs.get("output_hidden_states", False)
    outputs = base(*args, **{**kwargs, "output_hidden_states": True})
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:  # task models (e.g. *ForCausalLM) return logits; their last hidden state is post-norm
        hidden = outputs.hidden_states[-1]
    mask = kwargs.get("attention_mask")
    rows_total = hidden.shape[0]
    per_group, loss = [], None
    for head, rows in groups:
        select = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows.to(t.device)))
        logits = head(select(hidden), None if mask is None else select(mask), kwargs)
        per_group.append((rows, logits))
        own = {k: select(v) for k, v in targets.items() if k in head.label_names}
        if own:
            share = 1.0 if rows is None else rows.numel() / rows_total
            term = head.loss(logits, own) * share
            loss = term if loss is None else loss + term
    return HeadOutput(
        loss=loss,
        logits=_assemble(per_group, rows_total),
        hidden_states=outputs.hidden_states if wants_hidden else None,
        attentions=getattr(outputs, "attentions", None),
    )


def _assemble(per_group: list[tuple[torch.Tensor | None, torch.Tensor]], rows_total: int):
    """One logits tensor in row order when shapes agree, else a per-row list."""
    if len(per_group) == 1 and per_group[0][0] is None:
        return per_group[0][1]
    shapes = {tuple(logits.shape[1:]) for _, logits in per_group}
    if len(shapes) == 1:
        first = per_group[0][1]
        out = first.new_empty((rows_total, *first.shape[1:]))
        for rows, logits in per_group:
            out = out.index_copy(0, rows.to(out.device), logits)
        return out
    by_row: list[torch.Tensor | None] = [None] * rows_total
    for rows, logits in per_group:
        for position, row in enumerate(rows.tolist()):
            by_row[row] = logits[position]
    return by_row
