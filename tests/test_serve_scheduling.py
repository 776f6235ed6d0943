"""Continuous batching: rows join and leave at token boundaries and answer as they would alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import splice
from splice.serve.jobs import GenerateJob, Limits
from splice.serve.scheduler import Scheduler

from serving import MIXED_METHODS, char_tokenizer, greedy_alone, mixed_decoder, mixed_decoder_app

TIMEOUT = 120


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mixed_decoder()


def drive(model, jobs: list[GenerateJob], stagger: int = 0, chunk: int = 10_000, **options) -> list[object]:
    """Run ``jobs`` through a scheduler as the engine does (each turn: prefill up to ``chunk`` prompt tokens, then
    one decode step): the first half at once, the rest ``stagger`` turns later."""
    tokenizer, answers = char_tokenizer(), {}
    scheduler = Scheduler(model, tokenizer, cache_bytes=options.pop("cache_bytes", 2**26), max_rows=32,
                          answer=lambda job, answer: answers.__setitem__(id(job), answer))
    for job in jobs:
        job.prepare(tokenizer, Limits(max_input_tokens=64))
        job.internal = job.adapter
    first, later = (jobs[:len(jobs) // 2], jobs[len(jobs) // 2:]) if stagger else (jobs, [])
    for job in first:
        scheduler.admit(job)
    turns = 0
    while scheduler.prefilling or scheduler.running or later:
        if turns == stagger:
            for job in later:
                scheduler.admit(job)
            later = []
        scheduler.prefill(chunk)
        scheduler.step()
        turns += 1
    assert scheduler.batch is None and scheduler.jobs == 0  # every row left, every job answered
    return [answers[id(job)] for job in jobs]


SETUPS = [*MIXED_METHODS, "__base__", splice.Stack("lora1", "bottleneck")]
PROMPTS = ["hello", "a longer prompt, this one", "hi", "xyz", "the quick brown fox", "ok", "q"]


def twelve_requests() -> list[GenerateJob]:
    """12 greedy requests over every method, the base and a stack, with prompts and lengths all different."""
    return [GenerateJob(SETUPS[i % len(SETUPS)], prompts=[PROMPTS[i % len(PROMPTS)]], max_tokens=3 + (i * 5) % 11,
                        temperature=0, logprobs=2) for i in range(12)]


def test_a_request_answers_the_same_alone_and_among_twelve(model):
    alone = [drive(model, [job])[0] for job in twelve_requests()]
    together = drive(model, twelve_requests(), stagger=2)
    for job, one, many in zip(twelve_requests(), alone, together):
        assert many[0]["text"] == one[0]["text"], job.adapter
        assert many[0]["tokens"] == one[0]["tokens"]
        mine = torch.tensor([score[0] for score in many[0]["scores"]])
        theirs = torch.tensor([score[0] for score in one[0]["scores"]])
        assert torch.allclose(mine, theirs, atol=1e-3), job.adapter
        assert [set(s[1]) for s in many[0]["scores"]] == [set(s[1]) for s in one[0]["scores"]]
        if isinstance(job.adapter, str):  # transformers' generate gives the same text
            assert one[0]["text"] == greedy_alone(model, job.adapter, job.prompts[0], job.max_tokens)


def test_prompts_prefilled_in_chunks_answer_as_prefilled_whole(model):
    """Chunks of 3 tokens (prompts of up to 25) among running rows: every method, the base and a stack, with
    echo, give the tokens and logprobs of a whole prefill."""
    whole = drive(model, twelve_requests(), stagger=2)
    chunked = drive(model, twelve_requests(), stagger=2, chunk=3)
    for job, one, many in zip(twelve_requests(), whole, chunked):
        assert many[0]["tokens"] == one[0]["tokens"], job.adapter
        mine = torch.tensor([score[0] for score in many[0]["scores"]])
        assert torch.allclose(mine, torch.tensor([score[0] for score in one[0]["scores"]]), atol=1e-4), job.adapter
    for adapter in ("prefix", "prompt", "bottleneck", "__base__"):
        echo = [GenerateJob(adapter, prompts=["hello world, again"], max_tokens=2, echo=True, logprobs=1,
                            temperature=0) for _ in range(2)]
        one, many = drive(model, echo[:1])[0][0], drive(model, echo[1:], chunk=4)[0][0]
        assert one["tokens"] == many["tokens"], adapter
        assert torch.allclose(torch.tensor([s[0] for s in one["scores"][1:]]),
                              torch.tensor([s[0] for s in many["scores"][1:]]), atol=1e-4), adapter


def test_running_rows_decode_between_the_chunks_of_a_long_prompt(model):
    tokenizer = char_tokenizer()
    scheduler = Scheduler(model, tokenizer, cache_bytes=2**26, max_rows=8, answer=lambda job, answer: None)
    short, long = (GenerateJob("lora0", prompts=[p], max_tokens=30, temperature=0) for p in ("hi", "x" * 40))
    for job in (short, long):
        job.prepare(tokenizer, Limits(max_input_tokens=128))
        job.internal = job.adapter
    scheduler.admit(short)
    scheduler.prefill(8)
    scheduler.admit(long)
    for turn in range(1, 5):  # 8 of the long prompt's 40 tokens a turn, one token for the running row
        scheduler.prefill(8)
        scheduler.step()
        assert scheduler.prefilling[0].done == 8 * turn and len(scheduler.running[0].row.tokens) == 1 + turn
    scheduler.prefill(8)
    assert not scheduler.prefilling and len(scheduler.running) == 2  # its last chunk in, it joins the batch


def test_a_client_that_leaves_while_its_prompt_prefills_frees_it_at_once(model):
    tokenizer, answers = char_tokenizer(), {}
    scheduler = Scheduler(model, tokenizer, cache_bytes=2**26, max_rows=8,
                          answer=lambda job, answer: answers.__setitem__(id(job), answer))
    job = GenerateJob("prefix", prompts=["x" * 40], max_tokens=5)
    job.prepare(tokenizer, Limits(max_input_tokens=128))
    job.internal = job.adapter
    scheduler.admit(job)
    scheduler.prefill(8)
    job.cancel.set()
    scheduler.prefill(8)
    assert not scheduler.prefilling and scheduler.jobs == 0 and "client left" in str(answers[id(job)])


def test_echo_logprobs_are_the_models_own_log_softmax(model):
    for adapter in ("prefix", "prompt", "lora0", "__base__"):
        job = GenerateJob(adapter, prompts=["hello world"], max_tokens=0, echo=True, logprobs=1)
        choice = drive(model, [job])[0][0]
        ids = char_tokenizer()("hello world")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), adapter_names=[adapter]).logits[0]
        expected = logits.log_softmax(-1)[torch.arange(len(ids) - 1), ids[1:]]
        assert choice["scores"][0] is None and choice["tokens"] == ids and choice["text"] == "hello world"
        assert torch.allclose(torch.tensor([s[0] for s in choice["scores"][1:]]), expected, atol=1e-5), adapter
        assert choice["finish_reason"] == "length" and choice["completion_tokens"] == 0


def test_n_choices_share_a_prefill_and_a_seed_repeats_them(model):
    def sampled(seed):
        return drive(model, [GenerateJob("lora1", prompts=["hi", "yo"], max_tokens=6, n=3, seed=seed,
                                         temperature=1.0)])[0]
    first, again, other = sampled(7), sampled(7), sampled(8)
    assert len(first) == 6 and [c["text"] for c in first] == [c["text"] for c in again]
    assert [c["text"] for c in first] != [c["text"] for c in other]
    assert len({c["text"] for c in first}) > 1  # each choice draws from its own generator


def test_a_row_that_fails_mid_decode_does_not_fail_its_neighbours(model, monkeypatch):
    expected = drive(model, [GenerateJob("lora0", prompts=["hello"], max_tokens=6, temperature=0),
                             GenerateJob("ia3", prompts=["hi"], max_tokens=6, temperature=0)])
    forward = Scheduler._forward

    def failing(self, batch, rows):  # any forward holding the bottleneck's row fails
        if any(r.row.adapter == "bottleneck" for r in rows):
            raise RuntimeError("boom")
        return forward(self, batch, rows)

    monkeypatch.setattr(Scheduler, "_forward", failing)
    answers = drive(model, [GenerateJob("lora0", prompts=["hello"], max_tokens=6, temperature=0),
                            GenerateJob("bottleneck", prompts=["x"], max_tokens=6, temperature=0),
                            GenerateJob("ia3", prompts=["hi"], max_tokens=6, temperature=0)])
    assert isinstance(answers[1], RuntimeError) and "boom" in str(answers[1])
    assert [answers[0][0]["text"], answers[2][0]["text"]] == [expected[0][0]["text"], expected[1][0]["text"]]


def test_a_request_larger_than_the_cache_budget_is_refused_with_the_reason(model):
    tokenizer = char_tokenizer()
    token = 2 * 2 * 2 * 8 * 4  # keys and values, 2 layers, 2 kv heads of 8 dims, float32
    scheduler = Scheduler(model, tokenizer, cache_bytes=50 * token, max_rows=4, answer=lambda job, answer: None)
    small, big = (GenerateJob("lora0", prompts=["hi"], max_tokens=m) for m in (20, 60))
    for job in (small, big):
        job.prepare(tokenizer, Limits(max_input_tokens=64))
    assert scheduler.refusal(small) is None and "budget" in str(scheduler.refusal(big))
    assert "at most 4" in str(scheduler.refusal(GenerateJob("lora0", prompts=["a"], n=5, max_tokens=1, ids=[[3]])))
    assert scheduler.fits(small, [small]) and not scheduler.fits(small, [small, small])  # 3 x 22 tokens > 50


# -- through the engine -----------------------------------------------------------------------------------
@pytest.fixture()
def engine(tmp_path):
    app, _ = mixed_decoder_app(tmp_path, max_batch_size=16)
    engine = app.state.engine
    engine.residency.preload(list(MIXED_METHODS))
    engine.start()
    yield engine
    engine.stop()


def finished_at(job: GenerateJob, times: dict) -> GenerateJob:
    job.future.add_done_callback(lambda _: times.__setitem__(id(job), time.monotonic()))
    return job


def test_short_requests_arriving_after_a_long_one_finish_first(engine):
    times = {}
    started = threading.Event()
    long = GenerateJob("lora0", prompts=["hello"], max_tokens=58, temperature=1.0, seed=1,
                       sink=lambda choice, text: started.set())
    engine.submit(finished_at(long, times))
    assert started.wait(TIMEOUT)
    shorts = [engine.submit(finished_at(GenerateJob(name, prompts=["hi"], max_tokens=3, temperature=1.0, seed=2),
                                        times)) for name in ("prefix", "ia3", "bottleneck", "__base__")]
    assert long.future.result(TIMEOUT)[0]["completion_tokens"] > 10  # it was still running when they came
    for job in shorts:
        job.future.result(TIMEOUT)
        assert times[id(job)] < times[id(long)]


def test_a_client_that_leaves_frees_its_row_at_once(engine):
    pieces = []
    job = GenerateJob("prompt", prompts=["hello"], max_tokens=58, temperature=1.0, seed=3,
                      sink=lambda choice, text: pieces.append(text))
    engine.submit(job)
    deadline = time.monotonic() + TIMEOUT
    while not pieces and time.monotonic() < deadline:
        time.sleep(0.01)
    job.cancel.set()  # what the app does when the client disconnects
    answer = job.future.result(TIMEOUT)
    assert answer[0]["finish_reason"] == "cancelled" and answer[0]["completion_tokens"] < 58
    assert engine.depth == 0 and not engine.scheduler.running
