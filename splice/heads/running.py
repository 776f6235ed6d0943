"""Running heads: one backbone forward, then each head on its rows, with the loss the Trainer expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .contract import Head


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
    """Run ``base`` once, then each head on its rows (``None``: all rows) and its loss if targets were given.

    The loss is the mean over the batch's target items (labels other than -100), or,
    when the Trainer passes ``num_items_in_batch`` (gradient accumulation), their sum
    divided by that count, which is what the Trainer then expects.
    """
    if len(groups) == 1:
        kwargs = groups[0][0].prepare_inputs(dict(kwargs))
    num_items = kwargs.pop("num_items_in_batch", None)
    names = {name for head, _ in groups for name in head.label_names}
    targets = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
    wants_hidden = kwargs.get("output_hidden_states", False)
    outputs = base(*args, **{**kwargs, "output_hidden_states": True})
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:  # task models (e.g. *ForCausalLM) return logits; their last hidden state is post-norm
        hidden = outputs.hidden_states[-1]
    mask = kwargs.get("attention_mask")
    rows_total = hidden.shape[0]
    per_group, terms = [], []
    for head, rows in groups:
        logits = head(_take_rows(hidden, rows), None if mask is None else _take_rows(mask, rows), kwargs)
        per_group.append((rows, logits))
        own = {k: _take_rows(v, rows) for k, v in targets.items() if k in head.label_names}
        if own:
            items = own["labels"].ne(-100).sum() if "labels" in own else logits.new_tensor(logits.shape[0])
            terms.append((head.loss(logits, own), items))
    loss = None
    if terms:
        total = sum(mean * items for mean, items in terms)
        loss = total / (num_items if num_items is not None else sum(items for _, items in terms))
    return HeadOutput(
        loss=loss,
        logits=_assemble(per_group, rows_total),
        hidden_states=outputs.hidden_states if wants_hidden else None,
        attentions=getattr(outputs, "attentions", None),
    )


def _take_rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return tensor if rows is None else tensor.index_select(0, rows.to(tensor.device))


def _assemble(per_group: list[tuple[torch.Tensor | None, torch.Tensor]], rows_total: int):
    """One logits tensor in row order when shapes agree, else a per-row list.

    The per-row list reads the rows on the host (``.tolist()``): only heads of different output shapes in one
    batch pay that, after the backbone's forward, never inside a hook."""
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


# -- the head kinds ------------------------------------------------------------------------------
