"""The engine: a bounded queue of jobs and one worker thread that batches them across adapters.

HTTP handlers tokenize a job on a thread of their own (:meth:`Engine.prepare`),
call :meth:`Engine.submit` and await the job's future; they never touch the model.
The worker thread alone runs the model and changes it (adapters on and off,
through :class:`~splice.serve.residency.Residency`), so no lock is
ever held around a forward. Each turn of its loop it

1. lets the residency put the adapters queued jobs want on the model (starting
   reads of those on disk on the loader thread, which does not block this loop);
2. admits the oldest completions whose adapters are resident into
   :class:`~splice.serve.scheduler.Scheduler` while its key/value cache budget
   (``cache_mb``) allows, and prefills up to ``prefill_tokens`` prompt tokens of them a turn
   (a longer prompt in chunks over several turns) so that running rows are not held up long;
3. takes the oldest encode jobs (classify, embed) whose adapters are resident, up to
   ``max_batch_size`` rows — waiting up to ``max_wait_ms`` for more once the first has
   arrived, to fill the batch, unless completions are decoding — and runs them as one
   forward, each row routed to its own adapter and head;
4. runs one decode step of the running completions (each row its own adapter);
5. answers every job exactly once: its result, or the error that refused it.

With ``continuous=False`` completions are batched as encode jobs are, and each batch
is one ``generate`` call (:func:`~splice.serve.generation.generate_rows`): the
baseline the scheduler is measured against (``benchmarks/serve_load.py``).

Beyond ``max_queue`` waiting jobs, :meth:`submit` refuses at once
(:class:`Overloaded`, HTTP 429 with ``Retry-After``). :meth:`stop` stops accepting,
answers every job already accepted, then ends the worker.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import InvalidStateError

from ..adapter import BASE_NAME
from ..errors import SpliceError
from .errors import BadRequest, Overloaded, ServeError, ShuttingDown
from .jobs import EncodeJob, GenerateJob, Job, Limits, run_encode, run_generate
from .metrics import Metrics
from .residency import Residency
from .scheduler import Scheduler

log = logging.getLogger("splice.serve")


class Engine:
    """Batches jobs for one adapted model and a tokenizer; see the module docstring."""

    def __init__(self, model, tokenizer, *, limits: Limits | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, device_slots: int = 8, memory_slots: int = 32,
                 continuous: bool = True, cache_mb: float = 2048, prefill_tokens: int = 512):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise SpliceError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0.")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.limits = limits or Limits(max_input_tokens=_max_positions(model, tokenizer))
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running = 0  # jobs taken into the batch now running
        self.metrics = Metrics(queue_depth=lambda: self.depth, resident=lambda: self.residency.counts())
        self.residency = Residency(model, device_slots, memory_slots, on_change=self.wake,
                                   on_load=lambda result: self.metrics.loads.inc(result=result))
        self._accepting = False
        self._worker: threading.Thread | None = None
        self._batch_seconds = 0.05  # running mean of one batch's time, for Retry-After
        self.answered = 0  # jobs answered (result or error), for tests and /health
        self.prefill_tokens = prefill_tokens
        self.scheduler = None
        if continuous and self.can_generate:
            self.scheduler = Scheduler(model, tokenizer, cache_bytes=int(cache_mb * 2**20), max_rows=max_batch_size,
                                       answer=self._answer)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Engine:
        with self._cond:
            if self._worker is None:
                self._accepting = True
                self._worker = threading.Thread(target=self._loop, name="splice-engine", daemon=True)
                self._worker.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Accept nothing new, answer every accepted job (waiting up to ``timeout`` s), then end the worker."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        with self._cond:  # only if the drain timed out: never leave a job unanswered
            leftovers = list(self._pending)
            self._pending.clear()
        for job in leftovers:
            self._answer(job, ShuttingDown("The server stopped before this request ran."))
        self.residency.close()

    @property
    def depth(self) -> int:
        """Jobs accepted and not yet answered."""
        return len(self._pending) + self._running + (self.scheduler.jobs if self.scheduler else 0)

    @property
    def can_generate(self) -> bool:
        """Whether the base model generates text (a causal LM), as completions need."""
        can = getattr(self.model.base, "can_generate", None)
        return bool(can()) if callable(can) else hasattr(self.model.base, "generate")

    @property
    def accepting(self) -> bool:
        return self._accepting

    def wake(self) -> None:
        """Something changed (a load finished, an adapter was unloaded): let the worker look again."""
        with self._cond:
            self._cond.notify_all()

    # -- the HTTP side ----------------------------------------------------------------------------
    def prepare(self, job: Job) -> Job:
        """Tokenize ``job`` on the calling thread, or refuse it (:class:`BadRequest`: too long, untokenizable).

        The app calls it on a thread of its own before :meth:`submit`, so that no tokenization ever runs
        on the worker thread, between a queued request and the model."""
        try:
            job.prepare(self.tokenizer, self.limits)
        except SpliceError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the tokenizer chokes on is the input's fault
            raise BadRequest(f"The input could not be tokenized: {type(error).__name__}: {error}") from error
        return job

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (its future answers it) or refuse it at once: the queue is full, or we are stopping.
        A job not yet prepared is tokenized first, here on the caller's thread."""
        if job.ids is None:
            self.prepare(job)
        if self.scheduler is not None and isinstance(job, GenerateJob):
            refusal = self.scheduler.refusal(job)
            if refusal is not None:
                raise refusal
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("The server is shutting down and accepts no new requests.")
            if len(self._pending) >= self.max_queue:
                waves = math.ceil((len(self._pending) + self._running) / self.max_batch_size)
                raise Overloaded(f"The server is busy ({len(self._pending)} requests queued, the limit); "
                                 "retry shortly.", retry_after=math.ceil(waves * self._batch_seconds))
            job.accepted = time.monotonic()
            self._pending.append(job)
            self._cond.notify_all()
        return job

    # -- the worker ---------------------------------------------------------------------------------
    def _decoding(self) -> list:
        """The rows of completions now decoding (worker thread only)."""
        return self.scheduler.running if self.scheduler is not None else []

    def _busy(self) -> bool:
        """Whether completions are decoding or prefilling: the worker has a turn to run (worker thread only)."""
        return self.scheduler is not None and bool(self.scheduler.running or self.scheduler.prefilling)

    def _loop(self) -> None:
        while True:
            with self._cond:
                # an unload wakes the worker too: the adapter leaves the model now, not at the next request
                while not self._pending and not self._busy() and self._accepting \
                        and not self.residency.unloading():
                    self._cond.wait()
                if not self._pending and not self._busy() and not self._accepting:
                    return
                wanted = {job.adapter for job in self._pending if job.adapter != BASE_NAME}
                wanted |= {row.job.adapter for row in self._decoding() if row.job.adapter != BASE_NAME}
                if self.scheduler is not None:  # a prefilling job's adapter must stay on too
                    wanted |= {work.job.adapter for work in self.scheduler.prefilling if work.job.adapter != BASE_NAME}
            try:
                self.residency.maintain(wanted)
            except Exception:
                log.exception("adapter residency failed")
            if self.scheduler is not None:
                for job in self._admissions():
                    self.scheduler.admit(job)
                self.scheduler.prefill(self.prefill_tokens)
            batch = self._take_batch() if self._pending else []  # an unload alone runs no batch
            if batch:
                self._run(batch)
            if self._decoding():
                self.metrics.batch_rows.observe(len(self._decoding()), kind=GenerateJob.kind)
                self.scheduler.step()

    def _admissions(self) -> list[GenerateJob]:
        """The oldest completions whose adapters are resident, in order, while they fit beside the running and
        prefilling rows (the first that does not fit waits, and those after it: no request is overtaken for ever).
        """
        admitted = []
        with self._cond:
            for job in [job for job in self._pending if isinstance(job, GenerateJob)]:
                if job.adapter != BASE_NAME and self.residency.failure(job.adapter) is not None:
                    continue  # _take_batch answers it
                job.internal = self.residency.resident(job.adapter)
                if job.internal is None:
                    continue  # its adapter is still loading
                if not self.scheduler.fits(job, admitted):
                    break
                self._pending.remove(job)
                admitted.append(job)
        return admitted

    def _take_batch(self) -> list[Job]:
        """The next batch, or [] after waiting a little (for loads, or for more jobs to fill it); with continuous
        batching, encode jobs only, and no waiting while completions decode."""
        refused: list[tuple[Job, Exception]] = []
        decoding = self._busy()
        with self._cond:
            ready = []
            for job in list(self._pending):
                reason = self.residency.failure(job.adapter) if job.adapter != BASE_NAME else None
                if reason is not None:
                    self._pending.remove(job)
                    refused.append((job, ServeError(reason)))
                    continue
                if self.scheduler is not None and isinstance(job, GenerateJob):
                    continue  # the scheduler's (see _admissions)
                job.internal = self.residency.resident(job.adapter)
                if job.internal is not None:
                    ready.append(job)
            batch, rows = [], 0
            kind = ready[0].kind if ready else None
            for job in ready:
                if job.kind == kind and (not batch or rows + job.rows <= self.max_batch_size):
                    batch.append(job)
                    rows += job.rows
            oldest = ready[0].accepted if ready else None
            waited = time.monotonic() - oldest if oldest is not None else 0.0
            if not batch or (rows < self.max_batch_size and waited < self.max_wait and self._accepting):
                # nothing runnable yet (loads pending), or room left and time to wait for more rows
                if not decoding:
                    self._cond.wait(self.max_wait - waited if batch else 0.05)
                    batch = []
            for job in batch:
                self._pending.remove(job)
            self._running = len(batch)
        for job, error in refused:
            self._answer(job, error)
        return batch

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        try:
            self._run_group(batch)
        finally:
            with self._cond:
                self._running = 0
        elapsed = time.monotonic() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed

    def _run_group(self, jobs: list[Job]) -> None:
        """Run ``jobs`` as one batch. If it fails, no job pays for its neighbours: they run again apart (each
        adapter's jobs together, as some adapters cannot share a batch, then each job alone), so only the job
        at fault gets the error. A job that already streamed text cannot start over: it gets the error."""
        kind = jobs[0].kind
        self.metrics.batch_rows.observe(sum(job.rows for job in jobs), kind=kind)
        try:
            if kind == EncodeJob.kind:
                answers = run_encode(self.model, jobs, self.pad_id)
            else:
                answers = run_generate(self.model, self.tokenizer, jobs)
        except Exception as error:  # noqa: BLE001 - every job is answered: its result, or why it failed
            if not isinstance(error, SpliceError):
                log.error("a batch of %d requests failed", len(jobs), exc_info=error)
                error = RuntimeError(f"internal error while running the batch: {type(error).__name__}: {error}")
            parts = _apart(jobs)
            if not parts:  # one job alone: the error is its own
                self._answer(jobs[0], error)
            for part in parts:
                for job in part:
                    if job.streamed:
                        self._answer(job, error)
                fresh = [job for job in part if not job.streamed]
                if fresh:
                    self._run_group(fresh)
            return
        for job, answer in zip(jobs, answers):
            self._answer(job, answer)

    def _answer(self, job: Job, answer: object) -> None:
        """Resolve ``job`` exactly once (a future refuses a second answer) and record its latency."""
        try:
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)
        except InvalidStateError:  # its client went away and the future was cancelled: nobody to answer
            return
        if isinstance(job, GenerateJob) and not isinstance(answer, BaseException):
            self.metrics.tokens.inc(sum(choice["completion_tokens"] for choice in answer), adapter=job.adapter)
        self.metrics.latency.observe(time.monotonic() - job.accepted, adapter=job.adapter)
        with self._cond:
            self.answered += 1


def _apart(jobs: list[Job]) -> list[list[Job]]:
    """How to run a failed batch again: each adapter's jobs together if it mixed adapters, else each job
    alone; [] for a single job (nothing left to split)."""
    adapters = list(dict.fromkeys(job.internal for job in jobs))
    if len(adapters) > 1:
        return [[job for job in jobs if job.internal == adapter] for adapter in adapters]
    return [[job] for job in jobs] if len(jobs) > 1 else []


def _max_positions(model, tokenizer) -> int:
    """Tokens one row may hold: the model's position limit, and the tokenizer's if it states a real one."""
    config = getattr(model.base, "config", None)
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions", "max_seq_len")]
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    return min(limits) if limits else 512

