"""``splice serve --replicas 2`` under a local Ray Serve on loopback: the same answers as the single-process
server, and an adapter's requests kept on the replica that holds it (Ray Serve's model multiplexing)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import time

import httpx
import pytest

from splice.cli import build_parser
from splice.cli.serve_replicas import REPLICA_HEADER, application, asgi_stream

from serving import char_tokenizer, decoder, greedy_alone, save_adapters
from tiny_models import tiny_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    import ray
    from ray import serve

    folder = tmp_path_factory.mktemp("ray")
    tiny_model("llama", head="lm", seed=0).save_pretrained(folder / "base")
    char_tokenizer().save_pretrained(folder / "base")
    save_adapters(decoder(2), folder / "adapters")
    args = build_parser().parse_args(["serve", "--model", str(folder / "base"), "--adapters", str(folder / "adapters"),
                                      "--device", "cpu", "--device-slots", "2", "--quiet"])
    options = {k: v for k, v in vars(args).items() if k not in ("run", "replicas", "ray_address")}
    port = free_port()
    # Ray Serve kills a proxy that is not ready within 5 s or misses health checks of 10 s: on 2 cores shared with
    # the other test worker that happens, so the local instance (whose processes inherit this) waits longer.
    patience = {f"RAY_SERVE_PROXY_{what}_TIMEOUT_S": "120" for what in ("READY_CHECK", "HEALTH_CHECK")}
    saved = {key: os.environ.get(key) for key in patience}
    os.environ.update(patience)
    # and serve.start gives the proxy 60 s to start (a constant, read at call time): on busy cores it needs more
    serve_api = importlib.import_module("ray.serve._private.api")
    serve_api.HTTP_PROXY_TIMEOUT = max(getattr(serve_api, "HTTP_PROXY_TIMEOUT", 0), 300)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(options, replicas=2, slots=2), name="splice")
        yield f"http://127.0.0.1:{port}", decoder(2)
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def complete(url: str, adapter: str, prompt: str) -> httpx.Response:
    body = {"model": adapter, "prompt": prompt, "max_tokens": 5, "temperature": 0}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer


def test_two_replicas_answer_as_one_process_and_keep_an_adapter_on_one_replica(replicas):
    url, reference = replicas
    first = complete(url, "g0", "hello")
    time.sleep(2)  # the replica reports the adapter it took; routing follows it from then on
    again = [complete(url, "g0", prompt) for prompt in ("hello", "hi", "abc", "hello")]
    assert {answer.headers[REPLICA_HEADER] for answer in [first, *again]} == {first.headers[REPLICA_HEADER]}
    for answer, prompt in zip([first, *again], ["hello", "hello", "hi", "abc", "hello"]):
        assert answer.json()["choices"][0]["text"] == greedy_alone(reference, "g0", prompt, 5)
    other = complete(url, "g1", "hey")
    assert other.json()["choices"][0]["text"] == greedy_alone(reference, "g1", "hey", 5)
    base = complete(url, "", "hey")
    assert base.json()["choices"][0]["text"] == greedy_alone(reference, "__base__", "hey", 5)
    refused = httpx.put(f"{url}/v1/aliases/x", json={"targets": {"g0": 1}}, timeout=60)
    assert refused.status_code == 400 and "--adapters" in refused.json()["error"]["message"]


def test_a_streamed_completion_streams_through_the_ingress(replicas):
    url, reference = replicas
    body = {"model": "g1", "prompt": "hello", "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2  # one event a piece, not one whole answer
    text = "".join(choice["text"] for event in events[:-1] for choice in json.loads(event)["choices"])
    assert text == greedy_alone(reference, "g1", "hello", 8)


def test_asgi_stream_hands_on_each_piece_as_it_comes_and_tells_the_app_when_the_reader_leaves():
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    go_on, ended = asyncio.Event(), asyncio.Event()

    async def pieces():
        try:
            yield b"first"
            await go_on.wait()
            yield b"second"
            await asyncio.Event().wait()  # never more: the reader leaves
        finally:
            ended.set()

    app = Starlette(routes=[Route("/s", lambda request: StreamingResponse(pieces(), media_type="text/event-stream"),
                                  methods=["POST"])])

    async def read() -> list:
        stream = asgi_stream(app, "POST", "/s?x=1", b"{}", {"content-type": "application/json"})
        head = await stream.__anext__()
        first = await stream.__anext__()  # before go_on is set: it came as it was sent
        go_on.set()
        second = await stream.__anext__()
        await asyncio.wait_for(stream.aclose(), 10)  # the reader leaves mid-stream
        return [head[1], head[0]["content-type"], first, second, ended.is_set()]

    status, kind, first, second, app_ended = asyncio.run(read())
    assert (status, first, second, app_ended) == (200, b"first", b"second", True)
    assert kind.startswith("text/event-stream")


def test_without_ray_the_command_says_which_extra_to_install(monkeypatch, capsys):
    import splice.cli.serve_replicas as ray_serve
    from splice.cli import main

    monkeypatch.setattr(ray_serve, "serve", None)
    assert main(["serve", "--model", "unused", "--replicas", "2"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pip install 'splice[ray]'" in error[0]
    assert main(["serve", "--model", "unused", "--replicas", "0"]) != 0
    assert "--replicas must be at least 1" in capsys.readouterr().err
