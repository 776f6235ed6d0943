"""Bad requests get a 4xx with a message naming the problem, and the server keeps serving after each."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from splice.hub import Hub
from splice.serve import Engine, Limits, create_app

from serving import char_tokenizer, decoder_app, encoder, encoder_app


@pytest.fixture
def client(tmp_path):
    app, _ = encoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        yield client


def still_serving(client) -> None:
    response = client.post("/v1/classify", json={"adapter": "a0", "inputs": ["fine"]})
    assert response.status_code == 200, response.text


def refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("body, words", [
    (b"{not json", ["JSON"]),
    (b"[1, 2]", ["body"]),
    (json.dumps({"adapter": "a0"}).encode(), ["inputs", "required"]),
    (json.dumps({"adapter": "a0", "inputs": [1, 2]}).encode(), ["inputs"]),
    (json.dumps({"adapter": 3, "inputs": ["x"]}).encode(), ["adapter"]),
    (json.dumps({"adapter": "a0", "inputs": "x" * 3, "extra": {"ignored": True}}).encode(), None),
])
def test_malformed_bodies(client, body, words):
    response = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    if words is None:
        assert response.status_code == 200  # unknown fields are ignored, as OpenAI clients send extras
    else:
        refused(response, 400, *words)
    still_serving(client)


def test_empty_and_too_long_inputs(client):
    refused(client.post("/v1/classify", json={"adapter": "a0", "inputs": []}), 400, "empty")
    refused(client.post("/v1/classify", json={"adapter": "a0", "inputs": ["ok", ""]}), 400, "empty string")
    refused(client.post("/v1/classify", json={"adapter": "a0", "inputs": ["x" * 65]}), 400, "65 tokens", "64")
    refused(client.post("/v1/classify", json={"adapter": "a0", "inputs": ["x"] * 65}), 400, "at most 64")
    still_serving(client)


def test_unknown_names(client):
    refused(client.post("/v1/classify", json={"adapter": "nope", "inputs": ["x"]}), 404, "nope", "a0")
    refused(client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "nope")
    refused(client.get("/v1/aliases/nope"), 404, "nope")
    refused(client.delete("/v1/aliases/nope"), 404, "nope")
    refused(client.delete("/v1/adapters/nope"), 404, "nope")
    refused(client.put("/v1/aliases/x", json={"targets": {"nope": 1}}), 404, "nope")
    refused(client.put("/v1/aliases/x", json={"targets": {}}), 400, "targets")
    refused(client.put("/v1/aliases/x", json={"targets": {"a0": -1}}), 400, ">= 0")
    refused(client.put("/v1/aliases/x", json={"targets": {"a0": 0}}), 400, "sum to 0")
    refused(client.put("/v1/aliases/a0", json={"targets": {"a1": 1}}), 409, "adapter")
    refused(client.put("/v1/aliases/bad name", json={"targets": {"a1": 1}}), 400, "alias name")
    refused(client.post("/v1/classify", json={"adapter": "", "inputs": ["x"]}), 400, "no head")
    refused(client.post("/v1/completions", json={"model": "a0", "prompt": "x"}), 400, "does not generate")
    still_serving(client)


def test_adapter_folders_that_fail_to_load(client, tmp_path, caplog):
    """A client learns that a source cannot be loaded, never whether the path exists or what is in it;
    the server's log says why."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter.json").write_text("{truncated")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    good = tmp_path / "adapters" / "a1"
    (corrupt / "adapter.json").write_text((good / "adapter.json").read_text())
    (corrupt / "adapter.safetensors").write_bytes((good / "adapter.safetensors").read_bytes()[:100])
    (tmp_path / "a file").write_text("secret")
    sources = [broken, corrupt, tmp_path / "missing", tmp_path / "a file", tmp_path, "/" + "x" * 5000, "/a\0b"]
    with caplog.at_level("WARNING", logger="splice.serve"):
        answers = [client.post("/v1/adapters", json={"source": str(source), "name": "c"}) for source in sources]
    for answer in answers:
        refused(answer, 400, "Cannot load an adapter from the given source")
    assert len({answer.content for answer in answers}) == 1  # the same bytes whatever is (or is not) there
    assert "not valid JSON" in caplog.text and "corrupted" in caplog.text
    refused(client.post("/v1/adapters", json={"source": str(tmp_path / "adapters" / "a0")}), 409, "already")
    names = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "c" not in names and "broken" not in names
    still_serving(client)


def test_a_registry_reference_that_cannot_be_loaded_does_not_tell_where_the_registry_is(tmp_path, caplog):
    engine = Engine(encoder(0), char_tokenizer(), max_wait_ms=1)
    with TestClient(create_app(engine, hub=Hub(tmp_path / "hub"))) as client, caplog.at_level("WARNING"):
        missing = client.post("/v1/adapters", json={"source": "sentiment@9"})
        refused(missing, 400, "Cannot load an adapter from the given source")
        assert str(tmp_path) not in missing.text and str(tmp_path / "hub") in caplog.text
        refused(client.post("/v1/adapters", json={"source": "bad.name@1"}), 400, "Invalid adapter name")


def test_an_adapter_whose_files_broke_after_startup_fails_its_requests_only(tmp_path):
    app, _ = encoder_app(tmp_path, max_wait_ms=1)
    (tmp_path / "adapters" / "a1" / "adapter.safetensors").write_bytes(b"garbage")
    with TestClient(app) as client:
        refused(client.post("/v1/classify", json={"adapter": "a1", "inputs": ["x"]}), 400, "could not be loaded")
        state = {m["id"]: m.get("state") for m in client.get("/v1/models").json()["data"]}
        assert state["a1"] == "failed"
        still_serving(client)


def test_generation_limits(tmp_path):
    app, _ = decoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        ok = {"model": "g0", "prompt": "hi", "max_tokens": 4}
        refused(client.post("/v1/completions", json={**ok, "max_tokens": 0}), 400, "max_tokens")
        refused(client.post("/v1/completions", json={**ok, "max_tokens": "4"}), 400, "max_tokens")
        refused(client.post("/v1/completions", json={**ok, "prompt": "x" * 62}), 400, "60")  # 64 - 4 new tokens
        refused(client.post("/v1/completions", json={**ok, "temperature": -1}), 400, "temperature")
        refused(client.post("/v1/completions", json={**ok, "n": 0}), 400, "n must be between 1 and 8")
        refused(client.post("/v1/completions", json={**ok, "model": "nope"}), 404, "nope")
        refused(client.post("/v1/chat/completions", json={"model": "g0", "messages": []}), 400, "messages")
        refused(client.post("/v1/chat/completions", json={"model": "g0", "messages": [{"role": "user"}]}), 400,
                "content")
        assert client.post("/v1/completions", json=ok).status_code == 200


@pytest.mark.parametrize("field, value, words", [
    ("top_p", 1e-46, ["top_p", "too small"]),  # rounds to 0 in float32: it made its whole batch fail with NaN
    ("top_p", 1e-40, ["top_p", "too small"]),  # subnormal in float32
    ("temperature", 5e-324, ["temperature", "too small"]),
    ("top_p", "NaN", ["top_p", "finite"]),
    ("temperature", "Infinity", ["temperature", "finite"]),
    ("temperature", "-Infinity", ["temperature", "finite"]),
])
def test_sampling_values_that_cannot_work_are_refused(tmp_path, field, value, words):
    app, _ = decoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        # Python's json reads the NaN and Infinity literals some clients write: send them raw
        body = f'{{"model": "g0", "prompt": "hi", "max_tokens": 2, "{field}": {value}}}'
        refused(client.post("/v1/completions", content=body, headers={"content-type": "application/json"}),
                400, *words)
        assert client.post("/v1/completions", json={"model": "g0", "prompt": "hi", "max_tokens": 2,
                                                    "top_p": 1e-30}).status_code == 200  # tiny, but it works


class CountingTokenizer:
    """The served tokenizer, counting the characters it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.characters = tokenizer, 0

    def __call__(self, text, **options):
        self.characters += len(text)
        return self.tokenizer(text, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_oversized_requests_are_refused_before_they_are_read_or_tokenized(tmp_path):
    app, _ = encoder_app(tmp_path, max_wait_ms=1)
    engine = app.state.engine
    limits = engine.limits
    assert limits.max_input_chars == 16 * 64 and limits.max_body_bytes == 64 * 16 * 64 + 2**20  # the defaults
    engine.tokenizer = counting = CountingTokenizer(engine.tokenizer)
    with TestClient(app) as client:
        huge = {"adapter": "a0", "inputs": ["x" * 100_000] * 64}  # 6.4 MB: 64 texts far longer than the model reads
        refused(client.post("/v1/classify", json=huge), 413, "6400", str(limits.max_body_bytes), "max_body_bytes")

        def chunked():  # no Content-Length: refused once what arrived passes the limit
            yield b'{"adapter": "a0", "inputs": ["'
            for _ in range(30):
                yield b"x" * 100_000

        refused(client.post("/v1/classify", content=chunked(), headers={"content-type": "application/json"}), 413,
                f"more than {limits.max_body_bytes}")
        long_text = "x" * (limits.max_input_chars + 1)
        refused(client.post("/v1/classify", json={"adapter": "a0", "inputs": ["ok", long_text]}), 400,
                "inputs[1]", "1025 characters", "at most 1024")
        refused(client.post("/v1/embeddings", json={"input": long_text}), 400, "input is 1025 characters")
        assert counting.characters == 0  # none of it reached the tokenizer
        still_serving(client)


def test_oversized_chat_messages_are_refused_before_tokenizing(tmp_path):
    app, _ = decoder_app(tmp_path, max_wait_ms=1, limits=Limits(max_input_tokens=64, max_body_bytes=50_000))
    with TestClient(app) as client:
        messages = [{"role": "user", "content": "x" * 2000}]
        refused(client.post("/v1/chat/completions", json={"model": "g0", "messages": messages}), 400,
                "messages[0].content", "2000 characters")
        many = [{"role": "user", "content": "x" * 1000}] * 60
        refused(client.post("/v1/chat/completions", json={"model": "g0", "messages": many}), 413, "at most 50000")
        short = [{"role": "user", "content": "x" * 1000}] * 2
        refused(client.post("/v1/chat/completions", json={"model": "g0", "messages": short}), 400,
                "chat prompt", "at most 1024")
