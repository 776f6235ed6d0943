"""Completion rows, the text they grow, and one ``generate`` call for a batch of them.

The engine's default, :mod:`.scheduler`, steps rows one token at a time and shares
:class:`Row`, :func:`advance` and :func:`nucleus` with this module; :func:`generate_rows`
(one ``generate`` per batch: a batch ends when its longest row does) is the engine's
``continuous=False`` mode, kept as the baseline ``benchmarks/serve_load.py`` measures against.

``model.generate(..., adapter_names=[...])`` already routes every row to its own
adapter; what differs between rows is handled here, so rows with different
settings still share one call:

- :class:`RowSampling` (a logits processor) divides each row's logits by its own
  temperature and applies its own top-p; a temperature of 0 keeps only the argmax,
  so sampling that row is greedy decoding;
- :class:`RowTracker` is both the streamer (``generate`` hands it every new token)
  and a stopping criterion: it decodes each row's text as it grows, sends the new
  part to the row's ``sink`` (server-sent events), and ends a row at its end-of-sequence
  token, at one of its ``stop`` strings, at its ``max_tokens``, or when its client left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList


@dataclass(eq=False)
class Row:
    """One completion: its prompt ids and settings in; its text and why it ended out."""

    ids: list[int]
    adapter: str  # the model's (internal) adapter name, or "__base__"
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    sink: Callable[[str], None] | None = None  # receives each new piece of text as it is decided
    cancelled: Callable[[], bool] = lambda: False
    seed: int | None = None  # sampling draws from a generator seeded with it (the scheduler only)
    logprobs: int | None = None  # record each token's log-probability and this many alternatives (0-5)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` given to ``sink`` so far
    finish_reason: str | None = None
    scores: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # per token: logprob, top-k
    prompt_scores: list | None = None  # echo: each prompt token's (logprob, top-k); None for the first


class RowSampling(LogitsProcessor):
    """Per-row temperature (0: greedy) and nucleus (top-p) filtering."""

    def __init__(self, rows: list[Row]):
        self.temperature = torch.tensor([max(r.temperature, 1e-6) for r in rows]).unsqueeze(1)
        self.greedy = torch.tensor([r.temperature == 0 for r in rows]).unsqueeze(1)
        self.top_p = torch.tensor([r.top_p for r in rows]).unsqueeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = scores.device
        # float32 at least: a small temperature must not overflow half-precision logits to inf (then NaN)
        scores = nucleus(scores.float() / self.temperature.to(device), self.top_p.to(device))
        best = scores.argmax(dim=-1, keepdim=True)
        only_best = torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
        return torch.where(self.greedy.to(device), only_best, scores)


def nucleus(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[rows, vocab]`` with the tokens outside each row's top-p nucleus set to -inf.

    The most likely token always stays: a top_p below its probability (or one that rounds to 0 in
    float32) means greedy for that row, never a row with nothing left to sample (NaN for the batch)."""
    if not bool((top_p < 1).any()):
        return scores
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass ranked above each token
    drop[:, 0] = False
    return scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


class RowTracker(StoppingCriteria):
    """Streamer and stopping criterion in one: follows every row's tokens and text, and ends rows."""

    def __init__(self, rows: list[Row], decode: Callable[[list[int]], str], eos_ids: set[int]):
        self.rows, self.decode, self.eos_ids = rows, decode, eos_ids
        self._prompt_seen = False

    # -- the streamer interface ``generate`` calls ----------------------------------------------
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call hands over the prompts
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if row.finish_reason is None:
                advance(row, token, self.decode, self.eos_ids)

    def end(self) -> None:
        for row in self.rows:
            if row.finish_reason is None:
                row.finish_reason = "length"
            flush(row, final=True)

    # -- the stopping-criterion interface -----------------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        for row in self.rows:
            if row.finish_reason is None and row.cancelled():
                row.finish_reason = "cancelled"
        return torch.tensor([row.finish_reason is not None for row in self.rows], device=input_ids.device)


def advance(row: Row, token: int, decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
    """Give ``row`` its next token: end it at end-of-sequence, a stop string or ``max_tokens``; stream its text."""
    if token in eos_ids:
        row.finish_reason = "stop"
        flush(row, final=True)
        return
    row.tokens.append(token)
    row.text = decode(row.tokens)
    cut = min((i for i in (row.text.find(s) for s in row.stop) if i >= 0), default=-1)
    if cut >= 0:
        row.text, row.finish_reason = row.text[:cut], "stop"
    elif len(row.tokens) >= row.max_tokens:
        row.finish_reason = "length"
    flush(row, final=row.finish_reason is not None)


def flush(row: Row, final: bool) -> None:
    """Send the text decided so far: not a trailing half character, nor what could start a stop string."""
    end = len(row.text)
    if not final:
        if row.text.endswith("\ufffd"):  # a multi-byte character split across tokens
            end -= 1
        end -= max((k for s in row.stop for k in range(1, len(s)) if row.text[:end].endswith(s[:k])), default=0)
    if end > row.sent and row.sink is not None:
        row.sink(row.text[row.sent:end])
    row.sent = max(row.sent, end)


def generate_rows(model, rows: list[Row], pad_id: int, eos_ids: set[int], decode: Callable[[list[int]], str]) -> None:
    """Run ``rows`` through ``model.generate`` once (left-padded), filling each row's text and finish reason."""
    width = max(len(r.ids) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r.ids)) + r.ids for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows])
    device = next(model.base.parameters()).device
    tracker = RowTracker(rows, decode, eos_ids)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=max(r.max_tokens for r in rows), pad_token_id=pad_id,
                              eos_token_id=sorted(eos_ids) or None)
    with torch.inference_mode():
        model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                       adapter_names=[r.adapter for r in rows], generation_config=config,
                       logits_processor=LogitsProcessorList([RowSampling(rows)]),
                       stopping_criteria=StoppingCriteriaList([tracker]), streamer=tracker)
