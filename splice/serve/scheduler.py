"""Iteration-level scheduling of completions: rows join and leave the running batch at token boundaries.

The engine's worker thread drives a :class:`Scheduler` one step at a time. Between
two decode steps it prefills admitted requests, up to a budget of prompt tokens: each
prompt alone (its ``n`` choices share that one prefill), a long one in chunks over
several turns so the running rows keep decoding meanwhile; once a request's prompts
are in, its first tokens are drawn and its rows join the running batch. So a short
request that arrives while a long one runs starts at the next step and leaves when it
is done, instead of waiting for the whole batch. Each
decode step is one forward of one token for every running row, each row routed to
its own adapter or composition setup (``adapter_names``) with its own sampling,
stop strings and stream; rows that finish leave before the next step.

The key/value cache is one left-padded tensor per layer (:class:`.batch_cache.BatchCache`),
each row's columns its own: the soft slots a prefix or prompt adapter put there at
prefill, then its prompt and tokens, so prefix keys and values stay with their row.
A request is admitted only while the padded cache of every running row, grown to its
longest possible length, still fits the budget (``cache_bytes``); one that could never
fit is refused at once (:meth:`Scheduler.refusal`), the others wait in the queue.

Why not transformers' own continuous batching (``generate_batch``,
``init_continuous_batching``): it packs every request's tokens into one sequence
over a paged cache, and splice routes adapters per *row*, so each hook would need
per-token adapter segments; prefix adapters would have to write their keys and values into
its pages; and its internals (paged attention, the cache allocator) change from release
to release. Rows of a padded batch are what every method's hooks already route, on the
oldest and newest transformers alike; the price is the padding (the cache is as wide
as the longest row), which the budget counts.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..anatomy.calls import cache_argument, positions_from_mask
from ..errors import SpliceError
from .batch_cache import BatchCache, layers_of
from .errors import BadRequest, ServeError
from .generation import Row, advance, flush
from .jobs import GenerateJob, choices_of, end_of_sequence_ids, stream_to
from .sampling import choose, generator_for, prompt_scores

log = logging.getLogger("splice.serve")


@dataclass(eq=False)
class Running:
    """One row of the running batch: the choice it computes and what the next step feeds it."""

    row: Row
    job: GenerateJob
    generator: torch.Generator | None
    next_token: int = 0
    length: int = 0  # cache columns this row holds (soft slots, prompt, tokens so far)

    @property
    def widest(self) -> int:
        """The most columns this row can come to hold."""
        return self.length + self.row.max_tokens - len(self.row.tokens)


@dataclass(eq=False)
class Prefill:
    """A job admitted and not yet running: its prompts prefill one chunk at a time (see :meth:`Scheduler.prefill`)."""

    job: GenerateJob
    prompt: int = 0  # the prompt now prefilling
    done: int = 0  # its tokens already in ``cache``
    cache: object = None
    logits: list[torch.Tensor] = field(default_factory=list)  # echo: the logits of its chunks so far
    joined: list[Running] = field(default_factory=list)  # the rows of its prompts already prefilled
    caches: list[BatchCache] = field(default_factory=list)  # their caches, those still going


class Scheduler:
    """The running batch of one model; every method runs on the engine's worker thread only.

    ``answer(job, result_or_error)`` is called once per job, when its last row finishes or one fails.
    """

    def __init__(self, model, tokenizer, *, cache_bytes: int, max_rows: int,
                 answer: Callable[[GenerateJob, object], None]):
        anatomy = model.anatomy
        element = next(model.base.parameters()).element_size()
        self.token_bytes = 2 * anatomy.num_layers * anatomy.num_kv_heads * anatomy.head_dim * element
        self.cache_bytes, self.max_rows = cache_bytes, max_rows
        if cache_bytes < self.token_bytes:
            raise SpliceError(f"The cache budget ({cache_bytes} bytes) holds no token: one takes {self.token_bytes}.")
        self.model, self.answer = model, answer
        self.cache_name = cache_argument(model.base)
        self.explicit_positions = anatomy.positions == "explicit"
        self.eos = end_of_sequence_ids(model, tokenizer)
        self.decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)
        self.device = next(model.base.parameters()).device
        self.running: list[Running] = []
        self.prefilling: deque[Prefill] = deque()
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.base.forward).parameters
        self.batch: BatchCache | None = None
        self._rows: dict[int, tuple[GenerateJob, list[Row]]] = {}  # every row of each job not yet answered

    # -- admission ------------------------------------------------------------------------------------
    @property
    def jobs(self) -> int:
        """Jobs admitted and not yet answered (read from other threads: one ``len``, atomic)."""
        return len(self._rows) + len(self.prefilling)

    def _slots(self, rows: int, widest: int) -> int:
        return rows * widest * self.token_bytes

    def refusal(self, job: GenerateJob) -> BadRequest | None:
        """Why ``job`` could never run here, even alone (too many rows, or a cache larger than the budget)."""
        widest = max(len(ids) for ids in job.ids) + job.max_tokens
        if job.rows > self.max_rows:
            return BadRequest(f"This request asks for {job.rows} completions (prompts x n); the server runs at most "
                              f"{self.max_rows} at once. Send fewer prompts or a smaller n.")
        need = self._slots(job.rows, widest)
        if need > self.cache_bytes:
            return BadRequest(f"This request needs {need / 2**20:.1f} MiB of key/value cache ({job.rows} rows of up "
                              f"to {widest} tokens); the server's budget is {self.cache_bytes / 2**20:.1f} MiB. "
                              "Ask for fewer max_tokens, a shorter prompt or a smaller n.")
        return None

    def fits(self, job: GenerateJob, alongside: list[GenerateJob] = ()) -> bool:
        """Whether ``job``'s rows fit beside the running ones (and those of ``alongside``, about to join), the
        padded cache at its widest. Soft slots (prefix and prompt adapters) are not counted: they are short."""
        jobs = [*alongside, job]
        jobs = [*(work.job for work in self.prefilling), *jobs]
        widest = max([len(ids) + j.max_tokens for j in jobs for ids in j.ids] + [r.widest for r in self.running])
        rows = len(self.running) + sum(j.rows for j in jobs)
        return rows <= self.max_rows and self._slots(rows, widest) <= self.cache_bytes

    def admit(self, job: GenerateJob) -> None:
        """Queue ``job``'s prompts for prefill (:meth:`prefill` runs them); its cache counts from now on."""
        self.prefilling.append(Prefill(job))

    def prefill(self, budget: int) -> None:
        """Prefill up to ``budget`` prompt tokens (one chunk at least) of the admitted jobs, oldest first.

        A prompt longer than what is left of ``budget`` is prefilled in chunks over several turns, each chunk's
        forward extending the cache the earlier ones built, so the running rows get a decode step between two
        chunks instead of waiting for the whole prompt. A job whose prompts are all in draws its first tokens
        and its rows join the running batch (or it is answered, if none goes on)."""
        while self.prefilling and budget > 0:
            work = self.prefilling[0]
            if work.job.cancel.is_set():  # its client left: no more chunks for it, its cache goes at once
                self.prefilling.popleft()
                self.answer(work.job, ServeError("The client left before its prompt was prefilled."))
                continue
            try:
                budget -= self._chunk(work, budget)
            except Exception as error:  # noqa: BLE001 - the job at fault gets its error; the batch goes on
                self.prefilling.popleft()
                self.answer(work.job, _failure(error, work.job))
                continue
            if work.prompt == len(work.job.ids):
                self.prefilling.popleft()
                self._join(work)

    def _chunk(self, work: Prefill, budget: int) -> int:
        """Run the next chunk (at most ``budget`` tokens) of ``work``'s current prompt; the tokens it ran."""
        job, ids = work.job, work.job.ids[work.prompt]
        chunk = ids[work.done:work.done + budget]
        held = layers_of(work.cache)[0][0].shape[2] if work.cache is not None else 0
        mask = torch.ones(1, held + len(chunk), dtype=torch.long, device=self.device)
        call = {"input_ids": torch.tensor([chunk], device=self.device), "attention_mask": mask, "use_cache": True}
        if work.cache is not None:
            call[self.cache_name] = work.cache
            if self.explicit_positions:
                call["position_ids"] = positions_from_mask(mask, len(chunk))
        last = work.done + len(chunk) == len(ids)
        if self.keeps_logits and not (job.echo or not last):
            call["logits_to_keep"] = 1  # the vocabulary projection of every prompt token is a fifth of a prefill
        with torch.inference_mode():
            out = self.model(**call, adapter_names=[job.internal])
        work.cache = getattr(out, "cache", None) or out.past_key_values
        work.done += len(chunk)
        if job.echo:
            work.logits.append(out.logits[0])
        if last:
            self._rows_of(work, out.logits[0, -1:])
            work.prompt, work.done, work.cache, work.logits = work.prompt + 1, 0, None, []
        return len(chunk)

    def _rows_of(self, work: Prefill, last: torch.Tensor) -> None:
        """The ``n`` rows of ``work``'s prompt just prefilled, first token drawn from ``last`` ``[1, vocab]``."""
        job, prompt, ids = work.job, work.prompt, work.job.ids[work.prompt]
        length = layers_of(work.cache)[0][0].shape[2]  # soft slots (prefix, prompt tuning) and the prompt
        echoed = prompt_scores(torch.cat(work.logits), ids, job.logprobs or 0) if job.echo else None
        rows = []
        for copy in range(job.n):
            choice = prompt * job.n + copy
            seed = None if job.seed is None else job.seed + choice
            row = Row(ids, job.internal, job.max_tokens, job.temperature, job.top_p, job.stop,
                      stream_to(job, choice), job.cancel.is_set, seed=seed, logprobs=job.logprobs,
                      prompt_scores=echoed)
            if job.echo and row.sink is not None:
                row.sink(job.prompts[prompt])  # the echoed prompt leads the streamed text
            rows.append(Running(row, job, generator_for(row.seed, self.device), length=length))
        if job.max_tokens == 0:
            for running in rows:
                running.row.finish_reason = "length"
                flush(running.row, final=True)
        else:
            self._advance(rows, last.expand(len(rows), -1))
        work.joined.extend(rows)
        live = [i for i, r in enumerate(rows) if r.row.finish_reason is None]
        if live:
            batch = BatchCache(work.cache, torch.ones(1, length, dtype=torch.long, device=self.device))
            batch = batch.repeat(job.n)
            work.caches.append(batch.select(live) if len(live) < job.n else batch)

    def _join(self, work: Prefill) -> None:
        """``work``'s live rows join the running batch; a job with none left is answered now."""
        live = [r for r in work.joined if r.row.finish_reason is None]
        if not live:
            self.answer(work.job, choices_of(work.job, [r.row for r in work.joined]))
            return
        self.batch = BatchCache.join(([self.batch] if self.batch is not None else []) + work.caches)
        self.running.extend(live)
        self._rows[id(work.job)] = (work.job, [r.row for r in work.joined])

    # -- decoding -------------------------------------------------------------------------------------
    def step(self) -> None:
        """One token for every running row (rows of clients that left are dropped first)."""
        self._drop_cancelled()
        if not self.running:
            return
        width = self.batch.width
        try:
            logits = self._forward(self.batch, self.running)
        except Exception:  # noqa: BLE001 - find the rows at fault: every row alone, the others go on
            self._step_apart(width)
            return
        self._advance(self.running, logits)
        self._settle()

    def _forward(self, batch: BatchCache, rows: list[Running]) -> torch.Tensor:
        """One decode forward over ``rows`` (the cache grows by one column); the logits ``[rows, vocab]``."""
        mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        call = {"input_ids": torch.tensor([[r.next_token] for r in rows], device=self.device),
                "attention_mask": mask, self.cache_name: batch.cache, "use_cache": True}
        if self.explicit_positions:
            call["position_ids"] = positions_from_mask(mask, 1)
        with torch.inference_mode():
            out = self.model(**call, adapter_names=[r.row.adapter for r in rows])
        batch.mask = mask
        return out.logits[:, -1]

    def _step_apart(self, width: int) -> None:
        """After a failed step: cut every layer back to ``width`` columns (a failure halfway through the layers
        left some grown), then run each row alone; a row that fails fails its job, the rest go on together."""
        whole = self.batch.crop(width)
        survivors, parts = [], []
        for i, running in enumerate(self.running):
            if running.row.finish_reason is not None:  # its job already failed through another row
                continue
            alone = whole.select([i])
            try:
                logits = self._forward(alone, [running])
            except Exception as error:  # noqa: BLE001
                self._fail(running.job, _failure(error, running.job))
                continue
            self._advance([running], logits)
            survivors.append(running)
            parts.append(alone)
        self.running = [r for r in survivors if r.row.finish_reason != "failed"]
        kept = [p for r, p in zip(survivors, parts) if r.row.finish_reason != "failed"]
        self.batch = BatchCache.join(kept) if kept else None
        self._settle()

    def _advance(self, rows: list[Running], logits: torch.Tensor) -> None:
        tokens = choose(logits, [r.row for r in rows], [r.generator for r in rows])
        for running, token in zip(rows, tokens):
            row = running.row
            advance(row, token, self.decode, self.eos)
            del row.scores[len(row.tokens):]  # an end-of-sequence token is not part of the answer
            running.next_token, running.length = token, running.length + 1

    def _settle(self) -> None:
        """Answer the jobs whose rows are all done; drop finished rows from the batch."""
        keep = [i for i, r in enumerate(self.running) if r.row.finish_reason is None]
        done = [r for r in self.running if r.row.finish_reason is not None]
        if done:  # off the batch before the answers go out: a caller that sees its answer sees its row gone
            self.batch = self.batch.select(keep) if keep else None
            self.running = [self.running[i] for i in keep]
        for running in done:
            self._finish(running.job)

    def _drop_cancelled(self) -> None:
        for running in self.running:
            if running.row.finish_reason is None and running.row.cancelled():
                running.row.finish_reason = "cancelled"
        self._settle()

    def _finish(self, job: GenerateJob) -> None:
        entry = self._rows.get(id(job))
        if entry is not None and all(row.finish_reason is not None for row in entry[1]):
            del self._rows[id(job)]
            self.answer(job, choices_of(job, entry[1]))

    def _fail(self, job: GenerateJob, error: BaseException) -> None:
        entry = self._rows.pop(id(job), None)
        for row in entry[1] if entry else ():
            row.finish_reason = row.finish_reason or "failed"
        self.answer(job, error)


def _failure(error: Exception, job: GenerateJob) -> BaseException:
    if isinstance(error, SpliceError):
        return error
    log.error("a completion for %s failed", job.adapter, exc_info=error)
    return RuntimeError(f"internal error while running the request: {type(error).__name__}: {error}")
