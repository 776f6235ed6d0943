"""splice serve's HTTP API on tiny models, through FastAPI's TestClient (in process, no sockets)."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
from fastapi.testclient import TestClient

from splice.serve.metrics import CONTENT_TYPE

from serving import classify_alone, decoder_app, encoder_app, greedy_alone, same


@pytest.fixture
def encoder_client(tmp_path):
    app, reference = encoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        yield client, reference


@pytest.fixture
def decoder_client(tmp_path):
    app, reference = decoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        yield client, reference


def test_classify_uses_each_adapters_head(encoder_client):
    client, reference = encoder_client
    for adapter in ("a0", "a1"):
        response = client.post("/v1/classify", json={"adapter": adapter, "inputs": ["good movie", "bad"]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["adapter"] == adapter and response.headers["x-splice-adapter"] == adapter
        for text, result in zip(["good movie", "bad"], body["results"]):
            expected = classify_alone(reference, adapter, text)
            assert same([result["scores"][k] for k in ("neg", "neu", "pos")], expected)
            assert result["label"] == ["neg", "neu", "pos"][int(expected.argmax())]


def test_embeddings_are_unit_vectors_per_adapter(encoder_client):
    client, _ = encoder_client
    base = client.post("/v1/embeddings", json={"model": "", "input": ["hello", "world"]}).json()
    adapted = client.post("/v1/embeddings", json={"model": "a0", "input": "hello"}).json()
    vectors = [item["embedding"] for item in base["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)
    assert not same(vectors[0], adapted["data"][0]["embedding"], tol=1e-3)  # the adapter changes the encoder
    assert base["usage"]["prompt_tokens"] == len("hello") + len("world")


def test_completion_matches_generate_alone(decoder_client):
    client, reference = decoder_client
    for model in ("g0", "g1", ""):
        response = client.post("/v1/completions", json={"model": model, "prompt": "hi there", "max_tokens": 6,
                                                        "temperature": 0})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == greedy_alone(reference, model or "__base__", "hi there", 6)
        assert body["usage"]["prompt_tokens"] == len("hi there")


def test_chat_completion_uses_the_template(decoder_client):
    client, reference = decoder_client
    messages = [{"role": "user", "content": "hey"}]
    body = client.post("/v1/chat/completions", json={"model": "g1", "messages": messages, "max_tokens": 5,
                                                     "temperature": 0}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    # the prompt the template renders, without special tokens added again
    expected = greedy_alone(reference, "g1", "user: hey\nassistant: ", 5)
    assert body["choices"][0]["message"]["content"] == expected


def test_streaming_sends_the_same_text_as_one_answer(decoder_client):
    client, _ = decoder_client
    request = {"model": "g0", "prompt": "abc", "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/completions", json=request).json()["choices"][0]
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]


def test_chat_streaming_starts_with_the_role(decoder_client):
    client, _ = decoder_client
    request = {"model": "", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_stop_strings_cut_the_text(decoder_client):
    client, _ = decoder_client
    request = {"model": "g0", "prompt": "abc", "max_tokens": 12, "temperature": 0}
    free = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    assert len(free) >= 3, "the tiny model should produce some printable text"
    stop = free[2]
    cut = client.post("/v1/completions", json={**request, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == free[: free.index(stop)] and cut["finish_reason"] == "stop"


def test_models_adapters_and_aliases_lifecycle(encoder_client, tmp_path):
    client, reference = encoder_client
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["tiny-bert", "a0", "a1"]
    # load a second copy of a0 under another name, alias the two, then unload
    loaded = client.post("/v1/adapters", json={"source": str(tmp_path / "adapters" / "a0"), "name": "a0@2"})
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["method"] == "lora" and loaded.json()["head"] == "classification"
    put = client.put("/v1/aliases/sentiment", json={"targets": {"a1": 1.0}})
    assert put.status_code == 200 and put.json()["previous"] is None
    result = client.post("/v1/classify", json={"adapter": "sentiment", "inputs": ["x"]}).json()
    assert result["adapter"] == "a1"
    repoint = client.put("/v1/aliases/sentiment", json={"targets": {"a0@2": 1}}).json()
    assert repoint["previous"] == {"a1": 1.0}
    result = client.post("/v1/classify", json={"adapter": "sentiment", "inputs": ["x"]}).json()
    assert result["adapter"] == "a0@2"
    assert same(list(result["results"][0]["scores"].values()), classify_alone(reference, "a0", "x"))
    assert client.get("/v1/aliases/sentiment").json()["targets"] == {"a0@2": 1.0}
    assert client.delete("/v1/adapters/a0@2").status_code == 409  # an alias points at it
    assert client.delete("/v1/aliases/sentiment").status_code == 200
    assert client.delete("/v1/adapters/a0@2").status_code == 200
    assert client.post("/v1/classify", json={"adapter": "a0@2", "inputs": ["x"]}).status_code == 404


def test_alias_split_is_deterministic_per_request_id(encoder_client):
    client, _ = encoder_client
    client.put("/v1/aliases/ab", json={"targets": {"a0": 0.5, "a1": 0.5}})
    picks = {}
    for user in range(16):
        headers = {"X-Request-ID": f"user-{user}"}
        first = client.post("/v1/classify", json={"adapter": "ab", "inputs": ["x"]}, headers=headers).json()
        again = client.post("/v1/classify", json={"adapter": "ab", "inputs": ["x"]}, headers=headers).json()
        assert first["adapter"] == again["adapter"]
        picks[user] = first["adapter"]
    assert set(picks.values()) == {"a0", "a1"}  # 16 users: both arms get some (2 * 0.5**16 chance of failing)


def test_health_and_metrics(encoder_client):
    client, _ = encoder_client
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/classify", json={"adapter": "a0", "inputs": ["x", "y"]})
    client.post("/v1/classify", json={"adapter": "nope", "inputs": ["x"]})
    response = client.get("/metrics")
    assert response.headers["content-type"] == CONTENT_TYPE
    text = response.text
    # as prometheus_client writes them: labels in name order, numbers as floats
    assert 'splice_requests_total{adapter="a0",endpoint="/v1/classify",status="200"} 1.0' in text
    assert 'splice_requests_total{adapter="",endpoint="/v1/classify",status="404"} 1.0' in text
    assert 'splice_batch_size_bucket{kind="encode",le="2.0"} 1' in text
    assert 'splice_request_latency_seconds_count{adapter="a0"} 1' in text
    assert 'splice_resident_adapters{tier="device"} 1' in text
    assert "splice_queue_depth 0" in text


def test_unload_frees_the_slot_and_the_name_at_once(decoder_client, tmp_path):
    client, reference = decoder_client
    engine = client.app.state.engine
    request = {"model": "g0", "prompt": "hi", "max_tokens": 3, "temperature": 0}
    assert client.post("/v1/completions", json=request).status_code == 200
    internal = engine.residency.entry("g0").internal
    adapter = weakref.ref(engine.model.adapters[internal])
    position = engine.model.planner.resident().position[internal]  # its bank slots, for batches of mixed rows
    assert engine.residency.counts()["device"] == 1
    assert client.delete("/v1/adapters/g0").status_code == 200
    # no request ran since: the adapter is off the model, its device slot, bank slots and memory free
    assert internal not in engine.model.adapters and engine.residency.counts()["device"] == 0
    resident = engine.model.planner.resident()
    assert internal not in resident.position and position in resident.free
    gc.collect()
    assert adapter() is None, "something still holds the unloaded adapter"
    # and its name is free: loading it again works at once (it answered 409 until some request ran)
    loaded = client.post("/v1/adapters", json={"source": str(tmp_path / "adapters" / "g0")})
    assert loaded.status_code == 201, loaded.text
    text = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    assert text == greedy_alone(reference, "g0", "hi", 3)
