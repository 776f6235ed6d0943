"""Prompt tuning: soft embeddings in front of the model's (T5: its encoder's) input, or after its embedding block.

Before the prompt module runs, ``input_ids`` become ``inputs_embeds`` with the soft prompt in front;
the mask, ``token_type_ids``, positions and token labels grow to match. After it runs, the soft
positions are dropped from the outputs. With ``PromptTuning(insert="embedded")`` (site
``embedded_prompt``) the prompt goes in front of the embedding block's output instead: the model
call only gets the grown mask and labels, the real tokens keep their ids, types and positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...anatomy import Anatomy
from ...anatomy.calls import mask_follows_embeddings, strip_positions, token_embedding
from ...errors import AdapterError, AnatomyError
from ..programs import Program, Soft
from .calls import EMBEDDED_KEY, PROMPT_KEY, continues, set_positions


class Prompt:
    """The prompt handlers of one model: ``call`` before the prompt module, ``strip`` after it,
    ``embedded_output`` after the embedding block (for ``insert="embedded"``)."""

    def __init__(self, anatomy: Anatomy, module: nn.Module, program: Callable[[str], Program | None]):
        self.anatomy, self.module, self.program = anatomy, module, program
        self._inserted: tuple[int, int] | None = None  # (soft count, full length) while the prompt call runs
        self.visible: torch.Tensor | None = None  # the soft prompt's slots, while its call runs
        self._embedded: Soft | None = None  # an embedded prompt waiting for the embedding block's output

    def call(self, args: tuple, kwargs: dict):
        program, embedded = self.program(PROMPT_KEY), self.program(EMBEDDED_KEY)
        self._embedded = None
        if program is not None and embedded is not None:
            raise AdapterError(
                "A setup cannot combine PromptTuning(insert='input') and PromptTuning(insert='embedded'): one puts "
                "its tokens before the embedding block, the other after it. Activate prompts of one kind."
            )
        if embedded is not None and not continues(kwargs):
            return self._embedded_call(embedded, args, kwargs)
        if program is None or continues(kwargs):
            return None
        module = self.module
        if args and isinstance(args[0], torch.Tensor) and "input_ids" not in kwargs:
            kwargs, args = {**kwargs, "input_ids": args[0]}, args[1:]
        kwargs = dict(kwargs)
        ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if ids is None:
                return None
            embeds = token_embedding(module)(ids)
        rows, length = embeds.shape[:2]
        soft = program.soft(rows)
        count, visible = soft.length, soft.visible.to(embeds.device)
        kwargs["inputs_embeds"] = torch.cat([soft.values[0].to(embeds.dtype), embeds], 1)
        mask = kwargs.get("attention_mask")
        mask = torch.ones(rows, length, dtype=torch.long, device=embeds.device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([visible.to(mask.dtype), mask], 1)
        if kwargs.get("token_type_ids") is not None:
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(rows, count), types], 1)
        set_positions(self.anatomy, kwargs, visible, kwargs["attention_mask"], count + length, True, "soft prompts")
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape == (rows, length):
            if self.anatomy.causal:
                # The loss stays the one over the returned logits: the last soft position predicts nothing.
                labels = torch.cat([labels.new_full((rows, 1), -100), labels[:, 1:]], 1)
            kwargs["labels"] = torch.cat([labels.new_full((rows, count), -100), labels], 1)
        self._inserted = (count, count + length)
        self.visible = visible
        return args, kwargs

    def _embedded_call(self, program, args: tuple, kwargs: dict):
        """Insert after the embedding block: the model call only gets the grown mask and labels."""
        source = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            (kwargs[n] for n in ("input_ids", "inputs_embeds") if isinstance(kwargs.get(n), torch.Tensor)), None)
        if source is None:
            return None
        rows, length, device = source.shape[0], source.shape[1], source.device
        soft = program.soft(rows)
        count, visible = soft.length, soft.visible.to(device)
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None and not mask_follows_embeddings(self.anatomy.model):
            raise AnatomyError(
                "PromptTuning(insert='embedded') with a padding mask needs transformers 5, or the model loaded "
                "with attn_implementation='eager' on transformers 4.x (4.x's SDPA path sizes the mask from the "
                "input ids, not from the embeddings the prompt joins)."
            )
        mask = torch.ones(rows, length, dtype=torch.long, device=device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([visible.to(mask.dtype), mask], 1)
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape == (rows, length):
            kwargs["labels"] = torch.cat([labels.new_full((rows, count), -100), labels], 1)
        self._inserted = (count, count + length)
        self.visible = visible
        self._embedded = soft
        return args, kwargs

    def embedded_output(self, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        soft, self._embedded = self._embedded, None
        if soft is None:
            return y
        return torch.cat([soft.values[0].to(device=y.device, dtype=y.dtype), y], 1)

    def strip(self, output):
        inserted, self._inserted = self._inserted, None
        self.visible = None
        self._embedded = None
        return output if inserted is None else strip_positions(output, *inserted)
