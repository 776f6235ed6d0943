"""The server keeps the contract it publishes: one error shape, the statuses /openapi.json lists, docs offline."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from splice.cli import build_parser, main
from splice.cli.common import Steps
from splice.cli.serve_app import build_app
from splice.serve import Engine, create_app
from splice.serve.errors import ErrorResponse

from serving import char_tokenizer, decoder, decoder_app, encoder_app
from tiny_models import tiny_model


@pytest.fixture
def client(tmp_path):
    app, _ = encoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        yield client


def error_of(response, status: int) -> dict:
    """The refusal's ``error`` object, after checking it is OpenAI's shape and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    ErrorResponse.model_validate(body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_every_refusal_has_one_shape(client):
    bad_json = client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert error_of(bad_json, 400)["type"] == "invalid_request_error"
    wrong_type = error_of(client.post("/v1/classify", json={"adapter": "a0", "inputs": [1]}), 400)
    assert wrong_type["param"] == "inputs" and "inputs" in wrong_type["message"]
    missing = error_of(client.post("/v1/classify", json={"adapter": "nope", "inputs": ["x"]}), 404)
    assert missing["type"] == "not_found_error" and missing["code"] == "model_not_found"
    error_of(client.put("/v1/aliases/a0", json={"targets": {"a1": 1}}), 409)
    no_route = error_of(client.get("/v1/nothing/here"), 404)
    assert "/docs" in no_route["message"]
    wrong_method = client.patch("/v1/aliases/x")
    error_of(wrong_method, 405)
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}  # every route on the path


def test_a_request_that_runs_out_of_time_is_a_504(tmp_path):
    engine = Engine(decoder(0), char_tokenizer(), max_wait_ms=1)
    with TestClient(create_app(engine, request_timeout=0)) as client:
        error_of(client.post("/v1/embeddings", json={"input": "x"}), 504)


def test_serve_request_timeout_sets_the_apps_and_refuses_nonsense(tmp_path, capsys):
    """``--request-timeout`` reaches the app (long completions on a CPU outlive the 300 s default)."""
    tiny_model("llama", head="lm", seed=0).save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "base"), "--device", "cpu", "--quiet",
                                      "--request-timeout", "1e-9"])
    app, *_ = build_app(args, Steps(quiet=True))
    with TestClient(app) as client:
        error_of(client.post("/v1/embeddings", json={"input": "x"}), 504)
    for bad in ("nan", "0", "-3", "inf"):
        assert main(["serve", "--model", "unused", "--request-timeout", bad]) == 2
        assert "--request-timeout must be a positive number of seconds" in capsys.readouterr().err


def test_a_bug_still_answers_in_the_error_shape(tmp_path):
    engine = Engine(decoder(0), char_tokenizer(), max_wait_ms=1)
    engine.submit = lambda job: {}["a bug"]
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        failure = error_of(client.post("/v1/embeddings", json={"input": "x"}), 500)
    assert failure["type"] == "server_error" and "a bug" not in failure["message"]


def test_openapi_documents_what_the_server_sends(client):
    schema = client.get("/openapi.json").json()
    assert "422" not in re.findall(r'"(\d{3})"', str(schema).replace("'", '"'))
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if "requestBody" in operation:
                assert "400" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/health":
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    classify = schema["paths"]["/v1/classify"]["post"]["responses"]
    assert {"200", "400", "404", "413", "429", "500", "503", "504"} == set(classify)
    assert "Retry-After" in classify["429"]["headers"]
    assert {"400", "409"} <= set(schema["paths"]["/v1/adapters"]["post"]["responses"])
    assert "text/event-stream" in schema["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert schema["components"]["schemas"]["CompletionRequest"]["properties"]["n"]["type"] == "integer"


def test_integer_fields_take_whole_numbers_written_as_floats(tmp_path):
    app, _ = decoder_app(tmp_path, max_wait_ms=1)
    with TestClient(app) as client:
        ok = {"model": "g0", "prompt": "hi", "max_tokens": 3.0, "n": 1.0, "temperature": 0}
        answer = client.post("/v1/completions", json=ok)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] <= 3
        assert error_of(client.post("/v1/completions", json={**ok, "n": 1.5}), 400)["param"] == "n"
        assert error_of(client.post("/v1/completions", json={**ok, "max_tokens": "3"}), 400)["param"] == "max_tokens"


def test_long_names_are_cut_short_in_messages(client):
    name = "n" * 1_000_000
    path_name = "p" * 20_000
    refusals = [
        client.post("/v1/classify", json={"adapter": name, "inputs": ["x"]}),
        client.post("/v1/embeddings", json={"model": name, "input": "x"}),
        client.post("/v1/adapters", json={"source": "/" + name}),
        client.post("/v1/adapters", json={"source": name}),
        client.post("/v1/adapters", json={"source": "anything", "name": name}),
        client.put("/v1/aliases/x", json={"targets": {name: 1}}),
        client.put("/v1/aliases/x", json={"targets": {name: "heavy"}}),
        client.put(f"/v1/aliases/{path_name}", json={"targets": {"a0": 1}}),
        client.get(f"/v1/aliases/{path_name}"),
        client.delete(f"/v1/aliases/{path_name}"),
        client.delete(f"/v1/adapters/{path_name}"),
    ]
    for response in refusals:
        assert 400 <= response.status_code < 500, response.text[:300]
        assert len(response.content) < 1000, response.text[:300]
    assert "nnnn" in error_of(refusals[0], 404)["message"] and "1000000 characters" in refusals[0].text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_need_no_network(client, page):
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r'(?:src|href|url|spec-url)\s*[=:]\s*["\']([^"\']+)["\']', html.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert "http://" not in html.text and "https://" not in html.text  # nothing from a CDN (or anywhere else)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url


def test_a_stream_that_fails_ends_with_an_error_in_the_same_shape(tmp_path):
    app, _ = decoder_app(tmp_path, max_wait_ms=1)
    (tmp_path / "adapters" / "g1" / "adapter.safetensors").write_bytes(b"garbage")
    with TestClient(app) as client:
        streamed = client.post("/v1/completions", json={"model": "g1", "prompt": "hi", "stream": True})
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    failure = ErrorResponse.model_validate_json(events[-2]).error  # then [DONE]
    assert failure.type == "invalid_request_error" and "could not be loaded" in failure.message
    assert events[-1] == "[DONE]"
