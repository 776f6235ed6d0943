"""Prompt tuning (Lester et al. 2021): ``length`` trainable soft tokens in front of the input embeddings.

The soft tokens are prepended where the model embeds ``input_ids`` (T5: in its
encoder), and the mask, ``token_type_ids``, position ids and token labels grow
to match; the outputs come back without them, so ``logits`` and hidden states
line up with the caller's tokens. See :mod:`splice.hooks.soft` for the mechanism.

Two choices, made here deliberately:

- **The loss is the one over the returned logits.** Labels get ``-100`` at the
  soft positions *and* at the first real token, so a causal LM's loss equals
  the usual shifted loss over the logits the caller sees (no extra term for
  "first token predicted from the last soft token").
- **Heads inside the base model read what sits first.** A base pooler or
  ``[:, 0]`` classifier (BERT's) reads the first soft token, as in peft; splice
  heads read the returned hidden states, whose first position is the real one.

On T5 the prompt conditions the encoder; the encoder's outputs at the soft
positions are dropped, so the decoder cross-attends to the real tokens only
(and ``generate``, encoder-only use and the cross-attention mask need nothing).
Not mergeable: a soft token has no equivalent change of the base weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site
from ..anatomy.calls import token_embedding
from ..errors import ConfigError
from .base import Delta, MethodConfig, Recipe
from .registry import register

INSERTS = ("input", "embedded")


@register
@dataclass(frozen=True, kw_only=True)
class PromptTuning(MethodConfig):
    """``length`` soft tokens prepended to every input; initialised at random or from real tokens.

    ``init_ids`` (token ids, repeated or cut to ``length``) starts the soft tokens at
    those tokens' embeddings; ``init_text`` does the same for a text, tokenised with
    ``tokenizer`` (a tokenizer name or folder, as for ``AutoTokenizer.from_pretrained``;
    only the ids it yields matter). Otherwise the tokens are drawn at random with
    the spread of the model's own embedding table.

    ``insert``: ``"input"`` (default) prepends the soft tokens to the token embeddings,
    so position embeddings and the embedding LayerNorm apply to them and the real
    tokens start at position ``length``; ``"embedded"`` prepends them to the output of
    the model's embedding block (AdapterHub's prompt tuning), so they get neither and
    the real tokens keep positions ``0..T-1``. ``"embedded"`` is known for the BERT
    family (bert, roberta, xlm-roberta, electra).
    """

    method: ClassVar[str] = "prompt"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "prompt": Recipe({"length": 20}, 3e-2, help="learned soft tokens in front of the input"),
    }

    length: int = 20
    init_ids: tuple[int, ...] | None = None
    init_text: str | None = None
    tokenizer: str | None = None
    insert: str = "input"

    def validate(self) -> None:
        self._require_count("length", self.length)
        if self.insert not in INSERTS:
            raise ConfigError(f"PromptTuning.insert must be one of {', '.join(map(repr, INSERTS))}, "
                              f"got {self.insert!r}.")
        if self.layers is not None:
            raise ConfigError("PromptTuning acts on the input embeddings, not on blocks: drop layers=.")
        if self.init_ids is not None and self.init_text is not None:
            raise ConfigError("PromptTuning takes init_ids or init_text, not both.")
        if self.init_ids is not None and (not self.init_ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.init_ids)):
            raise ConfigError(f"PromptTuning.init_ids must be a non-empty list of token ids, got {self.init_ids!r}.")
        if self.init_text is not None and (not isinstance(self.init_text, str) or not self.init_text.strip()):
            raise ConfigError(f"PromptTuning.init_text must be a non-empty string, got {self.init_text!r}.")
        if self.init_text is not None and not self.tokenizer:
            raise ConfigError(
                "PromptTuning.init_text needs tokenizer='<tokenizer name or folder>' to turn the text into tokens; "
                "or pass the token ids yourself as init_ids=tokenizer(text)['input_ids']."
            )

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return [anatomy.prompt_site(embedded=self.insert == "embedded")]

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        table = token_embedding(site.module).weight
        if torch.empty(0).device.type == "meta":  # a load checking shapes before it allocates: values unused
            return PromptDelta(torch.empty(self.length, table.shape[1], dtype=table.dtype))
        ids = self._ids()
        if ids is None:
            values = torch.randn(self.length, table.shape[1], device=table.device) * table.detach().float().std()
        else:
            too_big = [i for i in ids if i >= table.shape[0]]
            if too_big:
                raise ConfigError(f"PromptTuning init ids {too_big} are outside this model's vocabulary "
                                  f"({table.shape[0]} tokens).")
            repeated = (list(ids) * (self.length // len(ids) + 1))[: self.length]
            values = table.detach()[torch.tensor(repeated, device=table.device)].float()
        return PromptDelta(values.to(table.dtype))

    def _ids(self) -> tuple[int, ...] | None:
        if self.init_text is None:
            return self.init_ids
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
        except (OSError, ValueError) as error:
            raise ConfigError(f"PromptTuning could not load tokenizer {self.tokenizer!r}: {error}") from error
        ids = tokenizer(self.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"PromptTuning.init_text {self.init_text!r} gives no tokens.")
        return tuple(ids)


class PromptDelta(Delta):
    """The soft prompt: ``embedding [length, hidden]``, the same for every row."""

    stage = "soft"

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.embedding = nn.Parameter(values.clone())

    def soft(self) -> tuple[torch.Tensor]:
        return (self.embedding,)
