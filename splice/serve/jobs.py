"""The work the engine batches: encode jobs (classify, embed) and generate jobs (completions).

A job is one request: a few texts, one adapter. The HTTP layer builds it and
tokenizes it (:meth:`Job.prepare`, which may refuse it) on a thread of its own, so
a long tokenization never holds up the model; the engine's worker thread packs
the rows of many jobs into one forward or one ``generate`` call, and hands each
job its own slice of the result (:func:`run_encode`, :func:`run_generate`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..adapter import BASE_NAME
from ..errors import SpliceError
from ..heads import Classification, Regression
from .errors import BadRequest
from .generation import Row, generate_rows

CLASSIFY, EMBED = "classify", "embed"


CHARS_PER_TOKEN = 16  # a generous bound: real text averages about 4 characters a token


@dataclass
class Limits:
    """How much one request may ask for.

    The two size limits are checked before anything is tokenized, so a request far larger than any real
    one is refused at once instead of holding up others: ``max_body_bytes`` before the body is read (HTTP
    413), ``max_input_chars`` per text before tokenizing (400). By default they follow the token limit:
    ``CHARS_PER_TOKEN`` characters a token, and a body holding ``max_inputs`` such texts (one byte a
    character) plus 1 MiB for the rest of the request.
    """

    max_input_tokens: int  # per text, prompt included (the model's positions)
    max_inputs: int = 64  # texts per request
    max_new_tokens: int = 512
    max_input_chars: int | None = None  # per text; None: CHARS_PER_TOKEN * max_input_tokens
    max_body_bytes: int | None = None  # per request body; None: max_inputs * max_input_chars + 1 MiB

    def __post_init__(self) -> None:
        if self.max_input_chars is None:
            self.max_input_chars = CHARS_PER_TOKEN * self.max_input_tokens
        if self.max_body_bytes is None:
            self.max_body_bytes = self.max_inputs * self.max_input_chars + 2**20
        values = (self.max_input_tokens, self.max_inputs, self.max_new_tokens, self.max_input_chars,
                  self.max_body_bytes)
        if not all(isinstance(v, int) and v >= 1 for v in values):
            raise SpliceError(f"Every limit must be a whole number >= 1, got {self}.")


@dataclass(eq=False)
class Job:
    """One request for ``adapter`` (a served public name, or ``"__base__"``); answered once through ``future``."""

    adapter: str
    future: Future = field(default_factory=Future)
    accepted: float = field(default_factory=time.monotonic)
    internal: str | None = None  # the model's name for the adapter, set when the batch is formed
    ids: list[list[int]] | None = None  # token ids per row, set by prepare()
    streamed: bool = False  # some of its answer already went to the client: it cannot be run again

    kind = ""

    @property
    def rows(self) -> int:
        raise NotImplementedError

    def prepare(self, tokenizer, limits: Limits) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class EncodeJob(Job):
    """Classify ``texts`` with the adapter's head, or embed them (mean-pooled last hidden states, unit length)."""

    texts: list[str] = field(default_factory=list)
    task: str = CLASSIFY

    kind = "encode"

    @property
    def rows(self) -> int:
        return len(self.texts)

    def prepare(self, tokenizer, limits: Limits) -> None:
        self.ids = [tokenizer(text)["input_ids"] for text in self.texts]
        _check_lengths(self.ids, limits.max_input_tokens, "input")


@dataclass(eq=False)
class GenerateJob(Job):
    """Complete each of ``prompts`` ``n`` times; ``sink(choice, text)`` streams the text as it comes.

    Choice ``i * n + j`` is prompt ``i``'s ``j``-th. ``logprobs``: record each token's log-probability and that
    many alternatives; ``echo``: the prompt leads each choice's text, with its tokens' log-probabilities
    (``max_tokens`` may then be 0); ``seed``: choice ``c`` samples from a generator seeded with ``seed + c``.
    """

    prompts: list[str] = field(default_factory=list)
    special_tokens: bool = True  # False for chat prompts, whose template already holds them
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None
    echo: bool = False
    seed: int | None = None
    sink: Callable[[int, str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    kind = "generate"

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    def prepare(self, tokenizer, limits: Limits) -> None:
        self.ids = [tokenizer(p, add_special_tokens=self.special_tokens)["input_ids"] for p in self.prompts]
        if any(not ids for ids in self.ids):
            raise BadRequest("A prompt tokenized to nothing; send some text.")
        _check_lengths(self.ids, limits.max_input_tokens - self.max_tokens,
                       f"prompt (with max_tokens={self.max_tokens} to generate)")


def _check_lengths(ids: list[list[int]], limit: int, what: str) -> None:
    longest = max((len(row) for row in ids), default=0)
    if longest > limit:
        raise BadRequest(f"An {what} is {longest} tokens long; this model takes at most {max(limit, 0)}. "
                         "Shorten it (or ask for fewer new tokens).")


def run_encode(model, jobs: list[EncodeJob], pad_id: int) -> list[object]:
    """One forward over every row of ``jobs`` (right-padded); each job's result, or the error refusing it."""
    answers: list[object] = [None] * len(jobs)
    heads = {}
    for i, job in enumerate(jobs):
        if job.task == CLASSIFY:
            head = model.adapters[job.internal].task_head if job.internal != BASE_NAME else None
            if not isinstance(head, (Classification, Regression)):
                what = "no head" if head is None else f"a {head.kind} head"
                answers[i] = BadRequest(f"Adapter {job.adapter!r} has {what}; /v1/classify needs an adapter with "
                                        "a Classification or Regression head.")
            heads[i] = head
    live = [i for i, answer in enumerate(answers) if answer is None]
    if not live:
        return answers
    rows = [(ids, jobs[i].internal) for i in live for ids in jobs[i].ids]
    width = max(len(ids) for ids, _ in rows)
    device = next(model.base.parameters()).device
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=mask, adapter_names=[name for _, name in rows],
                    output_hidden_states=True)
    hidden = out.hidden_states[-1]
    start = 0
    for i in live:
        job, span = jobs[i], range(start, start + jobs[i].rows)
        start += job.rows
        if job.task == EMBED:
            weights = mask[span.start:span.stop].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden[span.start:span.stop] * weights).sum(1) / weights.sum(1).clamp(min=1)
            answers[i] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist()
        else:
            answers[i] = [_scores(heads[i], out.logits[row]) for row in span]
    return answers


def _scores(head, logits: torch.Tensor) -> dict:
    """A classification's best label and every label's probability; a regression's values."""
    logits = logits.float().cpu()
    if isinstance(head, Regression):
        return {"values": logits.tolist()}
    probs = logits.sigmoid() if head.multi_label else logits.softmax(-1)
    names = list(head.labels) if head.labels else [f"LABEL_{k}" for k in range(len(probs))]
    best = int(probs.argmax())
    return {"label": names[best], "score": float(probs[best]), "scores": dict(zip(names, probs.tolist()))}


def run_generate(model, tokenizer, jobs: list[GenerateJob]) -> list[object]:
    """One ``generate`` call over every prompt of ``jobs`` (the engine's ``continuous=False`` mode); each job's
    choices, or why it cannot run so: ``n``, ``logprobs``, ``echo`` and ``seed`` need continuous batching."""
    answers: list[object] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        if job.n != 1 or job.logprobs is not None or job.echo or job.seed is not None:
            answers[i] = BadRequest("n, logprobs, echo and seed need continuous batching, which this server runs "
                                    "without; leave them out.")
    live = [job for job, answer in zip(jobs, answers) if answer is None]
    rows, owners = [], []
    for job in live:
        for choice, ids in enumerate(job.ids):
            rows.append(Row(ids, job.internal, job.max_tokens, job.temperature, job.top_p, job.stop,
                            stream_to(job, choice), job.cancel.is_set))
            owners.append(job)
    if rows:
        eos = end_of_sequence_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        generate_rows(model, rows, pad, eos, lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True))
    for i, job in enumerate(jobs):
        if answers[i] is None:
            answers[i] = choices_of(job, [row for row, owner in zip(rows, owners) if owner is job])
    return answers


def choices_of(job: GenerateJob, rows: list[Row]) -> list[dict]:
    """The answer to ``job``: per choice its text, finish reason, token counts and, where asked, its tokens with
    their log-probabilities (``openai`` shapes them as the API does)."""
    choices = []
    for choice, row in enumerate(rows):
        prompt = job.prompts[choice // job.n]
        answer = {"text": (prompt if job.echo else "") + row.text, "finish_reason": row.finish_reason,
                  "prompt_tokens": len(row.ids), "completion_tokens": len(row.tokens)}
        if job.logprobs is not None:
            answer["tokens"], answer["scores"] = list(row.tokens), list(row.scores)
            if job.echo:
                answer["tokens"] = [*row.ids, *answer["tokens"]]
                answer["scores"] = [*row.prompt_scores, *answer["scores"]]
        choices.append(answer)
    return choices


def stream_to(job: GenerateJob, choice: int) -> Callable[[str], None] | None:
    """The sink of ``job``'s choice ``choice`` (None if the job is not streamed)."""
    if job.sink is None:
        return None

    def sink(text: str) -> None:
        job.streamed = True
        job.sink(choice, text)
    return sink


def end_of_sequence_ids(model, tokenizer) -> set[int]:
    """The tokens that end a completion: the tokenizer's end of sequence and the model's generation config's
    (chat models often end turns with a token of their own, such as ``<|im_end|>``)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model.base, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if isinstance(i, int)}
