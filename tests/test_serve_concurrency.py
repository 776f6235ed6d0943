"""splice serve under concurrent traffic, on loopback (uvicorn on 127.0.0.1, port 0) and at the engine.

Bounded everywhere: a few dozen requests, client timeouts of 30 s, threads joined.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from splice.serve.background import serving
from splice.serve.errors import Conflict
from splice.serve.jobs import EncodeJob, GenerateJob

from serving import classify_alone, decoder_app, encoder_app, greedy_alone, same

TIMEOUT = 30.0


def slow_down(app, seconds: float) -> None:
    """Make every forward of the served model take at least ``seconds`` (a pre-hook that sleeps)."""
    app.state.engine.model.base.register_forward_pre_hook(lambda *args: time.sleep(seconds))


async def classify_many(url: str, adapters: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        return await asyncio.gather(*(client.post("/v1/classify", json={"adapter": a, "inputs": [f"text {i}"]})
                                      for i, a in enumerate(adapters)))


def test_overload_answers_429_and_every_accepted_request_exactly_once(tmp_path):
    app, reference = encoder_app(tmp_path, max_batch_size=2, max_queue=4, max_wait_ms=0)
    slow_down(app, 0.02)
    engine = app.state.engine
    with serving(app) as (url, _):
        adapters = ["a0", "a1"] * 20
        responses = asyncio.run(classify_many(url, adapters))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    busy = [r for r in responses if r.status_code == 429]
    assert busy, "40 requests against a queue of 4 should overflow it"
    assert all(int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]["message"] for r in busy)
    accepted = statuses.count(200)
    assert engine.answered == accepted  # every accepted request answered, and only once
    for i, (adapter, response) in enumerate(zip(adapters, responses)):
        if response.status_code == 200:
            scores = list(response.json()["results"][0]["scores"].values())
            assert same(scores, classify_alone(reference, adapter, f"text {i}"))


def test_loads_unloads_and_alias_changes_during_traffic(tmp_path):
    app, reference = encoder_app(tmp_path, max_wait_ms=2, device_slots=2)  # 3+ adapters on 2 slots: evictions
    copy = str(tmp_path / "adapters" / "a0")
    results, stop = [], threading.Event()

    def traffic(url: str, names: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            i = 0
            while not stop.is_set() and i < 400:
                name = names[i % len(names)]
                response = client.post("/v1/classify", json={"adapter": name, "inputs": [f"t{i}"]})
                results.append((f"t{i}", response))
                i += 1

    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=TIMEOUT) as admin:
        assert admin.put("/v1/aliases/live", json={"targets": {"a0": 1}}).status_code == 200
        workers = [threading.Thread(target=traffic, args=(url, names))
                   for names in (["live", "a1"], ["live", "a0", "a1"])]
        for worker in workers:
            worker.start()
        def traffic_moves() -> None:  # let some requests through between changes
            target, deadline = len(results) + 6, time.monotonic() + TIMEOUT
            while len(results) < target and time.monotonic() < deadline:
                time.sleep(0.01)

        for round_ in range(3):
            name = f"copy{round_}"
            assert admin.post("/v1/adapters", json={"source": copy, "name": name}).status_code == 201
            assert admin.put("/v1/aliases/live", json={"targets": {name: 1, "a1": 1}}).status_code == 200
            traffic_moves()
            assert admin.put("/v1/aliases/live", json={"targets": {"a0": 1}}).status_code == 200
            assert admin.delete(f"/v1/adapters/{name}").status_code == 200
            traffic_moves()
        stop.set()
        for worker in workers:
            worker.join(TIMEOUT)
        assert not any(worker.is_alive() for worker in workers)
    assert len(results) > 20
    answered_by = set()
    for text, response in results:
        assert response.status_code == 200, response.text  # no in-flight request failed
        body = response.json()
        adapter = body["adapter"]
        answered_by.add(adapter)
        # a copy answers exactly as the adapter it copies: never half-loaded
        expected = classify_alone(reference, "a0" if adapter.startswith("copy") else adapter, text)
        assert same(list(body["results"][0]["scores"].values()), expected)
    assert {"a0", "a1"} <= answered_by


def test_shutdown_drains_in_flight_requests(tmp_path):
    app, _ = encoder_app(tmp_path, max_batch_size=1, max_wait_ms=0)
    slow_down(app, 0.05)
    engine = app.state.engine
    box = {}
    with serving(app) as (url, server):
        def send() -> None:
            box["responses"] = asyncio.run(classify_many(url, ["a0", "a1"] * 4))

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + TIMEOUT
        while engine.depth < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.depth >= 4
        server.should_exit = True  # uvicorn stops accepting, then waits for these
        sender.join(TIMEOUT)
    assert [r.status_code for r in box["responses"]] == [200] * 8
    assert engine.answered == 8 and not engine.accepting


def test_engine_stop_answers_everything_queued(tmp_path):
    app, _ = encoder_app(tmp_path, max_batch_size=2, max_wait_ms=0)
    engine = app.state.engine.start()
    jobs = [engine.submit(EncodeJob(f"a{i % 2}", texts=[f"x{i}"])) for i in range(10)]
    engine.stop(timeout=TIMEOUT)
    assert all(job.future.done() and job.future.exception() is None for job in jobs)
    assert engine.answered == 10


def test_a_mixed_batch_answers_each_request_as_alone(tmp_path):
    app, reference = encoder_app(tmp_path, max_batch_size=16, max_wait_ms=300, device_slots=4)
    engine = app.state.engine
    engine.residency.preload(["a0", "a1"])
    engine.start()
    texts = ["short", "a much longer input text", "mid size"]
    jobs = [engine.submit(EncodeJob(name, texts=texts)) for name in ("a0", "a1", "a0")]
    embed = engine.submit(EncodeJob("__base__", texts=["short"], task="embed"))
    answers = [job.future.result(TIMEOUT) for job in jobs]
    embed.future.result(TIMEOUT)
    engine.stop()
    assert engine.metrics.batch_rows.count(kind="encode") == 1  # all four requests in one forward
    for job, answer in zip(jobs, answers):
        for text, result in zip(texts, answer):
            assert same(list(result["scores"].values()), classify_alone(reference, job.adapter, text))


def test_a_mixed_generation_batch_decodes_each_row_as_alone(tmp_path):
    app, reference = decoder_app(tmp_path, max_batch_size=16, max_wait_ms=300)
    engine = app.state.engine
    engine.residency.preload(["g0", "g1"])
    engine.start()
    prompts = {"g0": "hello there", "g1": "hi", "__base__": "abc"}
    jobs = [engine.submit(GenerateJob(name, prompts=[p], max_tokens=6, temperature=0)) for name, p in prompts.items()]
    sampled = engine.submit(GenerateJob("g1", prompts=["zz"], max_tokens=6, temperature=0.9, top_p=0.8))
    answers = [job.future.result(TIMEOUT) for job in jobs]
    assert sampled.future.result(TIMEOUT)[0]["completion_tokens"] <= 6
    engine.stop()
    # the rows shared their decode steps: 5 each, a late joiner adding a step or two (apart they would take 20)
    assert engine.metrics.batch_rows.count(kind="generate") <= 7
    for (name, prompt), answer in zip(prompts.items(), answers):
        assert answer[0]["text"] == greedy_alone(reference, name, prompt, 6)


class Poisoned(GenerateJob):
    """A request whose prompt holds a token id the model does not have: its forward fails."""

    def prepare(self, tokenizer, limits) -> None:
        super().prepare(tokenizer, limits)
        self.ids = [[10**6]]


class PoisonedEncode(EncodeJob):
    def prepare(self, tokenizer, limits) -> None:
        super().prepare(tokenizer, limits)
        self.ids = [[10**6]]


def batched_together(app, jobs: list) -> list:
    """Submit ``jobs`` (to one batch: it is full once they are all in) and return their answers or errors."""
    engine = app.state.engine
    engine.residency.preload(["g0", "g1"] if isinstance(jobs[0], GenerateJob) else ["a0", "a1"])
    engine.start()
    try:
        for job in jobs:
            engine.submit(job)
        for job in jobs:
            job.future.exception(TIMEOUT)  # wait for every answer
    finally:
        engine.stop()
    assert engine.metrics.batch_rows.count(kind=jobs[0].kind) >= 1
    return [job.future.exception() or job.future.result() for job in jobs]


def test_a_generation_row_that_fails_does_not_fail_its_neighbours(tmp_path):
    app, reference = decoder_app(tmp_path, max_batch_size=3, max_wait_ms=5000)
    good = [GenerateJob("g0", prompts=["hello"], max_tokens=5, temperature=0),
            GenerateJob("g1", prompts=["hi"], max_tokens=5, temperature=0)]
    answers = batched_together(app, [good[0], Poisoned("g0", prompts=["x"], max_tokens=5), good[1]])
    assert answers[0][0]["text"] == greedy_alone(reference, "g0", "hello", 5)
    assert answers[2][0]["text"] == greedy_alone(reference, "g1", "hi", 5)
    assert isinstance(answers[1], RuntimeError) and "IndexError" in str(answers[1])


def test_an_encode_row_that_fails_does_not_fail_its_neighbours(tmp_path):
    app, reference = encoder_app(tmp_path, max_batch_size=3, max_wait_ms=5000)
    jobs = [EncodeJob("a0", texts=["good"]), PoisonedEncode("a0", texts=["x"]), EncodeJob("a0", texts=["fine"])]
    answers = batched_together(app, jobs)
    assert same(list(answers[0][0]["scores"].values()), classify_alone(reference, "a0", "good"))
    assert same(list(answers[2][0]["scores"].values()), classify_alone(reference, "a0", "fine"))
    assert isinstance(answers[1], RuntimeError)


def test_a_row_with_a_tiny_top_p_decodes_greedily_beside_others(tmp_path):
    app, reference = decoder_app(tmp_path, max_batch_size=2, max_wait_ms=5000)
    tiny = GenerateJob("g1", prompts=["hi"], max_tokens=5, top_p=1e-46)  # past the HTTP checks, as in a library
    answers = batched_together(app, [GenerateJob("g0", prompts=["hello"], max_tokens=5, temperature=0), tiny])
    assert answers[0][0]["text"] == greedy_alone(reference, "g0", "hello", 5)
    assert answers[1][0]["text"] == greedy_alone(reference, "g1", "hi", 5)
    # decode steps: 4 each, shared, the second row joining up to a step or two later; a step retried row by row
    # (what a NaN from the tiny top_p would cause) runs each row alone, 8 or more
    assert app.state.engine.metrics.batch_rows.count(kind="generate") <= 6


class HeldTokenizer:
    """The served tokenizer, except that texts starting with HOLD wait (tokenizing) until ``release`` is set."""

    def __init__(self, tokenizer):
        self.tokenizer, self.holding, self.release = tokenizer, threading.Event(), threading.Event()

    def __call__(self, text, **options):
        if text.startswith("HOLD"):
            self.holding.set()
            assert self.release.wait(TIMEOUT)
        return self.tokenizer(text, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_slow_tokenization_does_not_hold_up_other_requests(tmp_path):
    app, reference = encoder_app(tmp_path, max_wait_ms=1)
    engine = app.state.engine
    engine.tokenizer = held = HeldTokenizer(engine.tokenizer)
    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        box = {}
        slow = threading.Thread(target=lambda: box.update(
            slow=client.post("/v1/classify", json={"adapter": "a0", "inputs": ["HOLD this"]})))
        slow.start()
        try:
            assert held.holding.wait(TIMEOUT)
            # the worker thread is free: a small request is answered while the big one is still tokenizing
            quick = client.post("/v1/classify", json={"adapter": "a1", "inputs": ["quick"]}, timeout=10)
            assert quick.status_code == 200 and not held.release.is_set()
            assert same(list(quick.json()["results"][0]["scores"].values()), classify_alone(reference, "a1", "quick"))
        finally:
            held.release.set()
            slow.join(TIMEOUT)
        assert box["slow"].status_code == 200


def block_reads(engine) -> tuple[threading.Event, threading.Event]:
    """Make adapter reads wait: returns (a read has started, let reads finish)."""
    reading, release = threading.Event(), threading.Event()
    read = engine.residency._read

    def blocked_read(entry):
        reading.set()
        assert release.wait(TIMEOUT)
        return read(entry)

    engine.residency._read = blocked_read
    return reading, release


def test_a_load_does_not_stall_requests_for_resident_adapters(tmp_path):
    app, _ = encoder_app(tmp_path, max_wait_ms=0)
    engine = app.state.engine
    engine.residency.preload(["a0"])
    reading, release = block_reads(engine)
    engine.start()
    try:
        waiting = engine.submit(EncodeJob("a1", texts=["x"]))
        assert reading.wait(TIMEOUT)
        for i in range(3):  # a0 keeps answering while a1 is being read
            assert engine.submit(EncodeJob("a0", texts=[f"y{i}"])).future.result(TIMEOUT)
        assert not waiting.future.done()
        release.set()
        assert waiting.future.result(TIMEOUT)[0]["label"] in ("neg", "neu", "pos")
    finally:
        release.set()
        engine.stop()


def test_unloading_an_adapter_being_read_still_answers_its_accepted_requests(tmp_path):
    app, reference = encoder_app(tmp_path, max_wait_ms=0)
    engine = app.state.engine
    reading, release = block_reads(engine)
    engine.start()
    try:
        waiting = engine.submit(EncodeJob("a1", texts=["x"]))
        assert reading.wait(TIMEOUT)
        gone = engine.residency.unload("a1")
        assert "a1" not in engine.residency.names()
        with pytest.raises(Conflict, match="being unloaded"):  # until its accepted request is answered
            engine.residency.load(str(tmp_path / "adapters" / "a1"))
        release.set()
        answer = waiting.future.result(TIMEOUT)
        assert same(list(answer[0]["scores"].values()), classify_alone(reference, "a1", "x"))
        gone.result(TIMEOUT)  # then dropped, without waiting for another request
        assert "a1" not in engine.model.adapters
    finally:
        release.set()
        engine.stop()


@pytest.mark.parametrize("pin", [False, True])
def test_residency_keeps_at_most_the_device_slots_on_the_model(tmp_path, pin):
    app, reference = encoder_app(tmp_path, adapters=4, max_wait_ms=0, device_slots=2, memory_slots=1)
    engine = app.state.engine
    if pin:
        engine.residency.pin("a3")
        engine.residency.preload(["a3"])
    engine.start()
    try:
        for name in ["a0", "a1", "a2", "a0", "a1", "a2"]:
            answer = engine.submit(EncodeJob(name, texts=["x"])).future.result(TIMEOUT)
            assert same(list(answer[0]["scores"].values()), classify_alone(reference, name, "x"))
            on_model = set(engine.model.adapters)
            assert len(on_model) <= 2
            assert ("a3" in on_model) == pin
        counts = engine.residency.counts()
        assert counts["device"] == 2 and counts["memory"] <= 1
    finally:
        engine.stop()
