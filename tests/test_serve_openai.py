"""splice serve through the official ``openai`` Python client, against uvicorn on 127.0.0.1 (port 0).

Bounded: each server lives for one module's tests, the client has a 30 s timeout and never retries.
"""

from __future__ import annotations

import base64
import struct

import openai
import pytest

from splice.serve.background import serving

from serving import decoder_app, encoder_app, greedy_alone, same


def client_for(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30.0)


@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory):
    app, reference = encoder_app(tmp_path_factory.mktemp("encoder"), max_wait_ms=1)
    with serving(app) as (url, _):
        yield client_for(url), url, reference


@pytest.fixture(scope="module")
def decoder_server(tmp_path_factory):
    app, reference = decoder_app(tmp_path_factory.mktemp("decoder"), max_wait_ms=1)
    with serving(app) as (url, _):
        yield client_for(url), url, reference


def test_default_embeddings_call_decodes_base64_vectors(encoder_server):
    client, url, _ = encoder_server
    default = client.embeddings.create(model="a0", input=["hello", "world"])  # sends encoding_format=base64
    floats = client.embeddings.create(model="a0", input=["hello", "world"], encoding_format="float")
    assert [len(item.embedding) for item in default.data] == [32, 32]
    for mine, theirs in zip(default.data, floats.data):
        assert same(mine.embedding, theirs.embedding, tol=1e-6)
    raw = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).embeddings.with_raw_response
    encoded = raw.create(model="a0", input="hello", encoding_format="base64").http_response.json()
    vector = struct.unpack("<32f", base64.b64decode(encoded["data"][0]["embedding"]))  # little-endian float32
    assert same(vector, floats.data[0].embedding, tol=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="a0", input="x", dimensions=8)


def test_models_have_created_and_can_be_retrieved_one_by_one(encoder_server):
    client, _, _ = encoder_server
    listed = client.models.list().data
    assert [m.id for m in listed] == ["tiny-bert", "a0", "a1"]
    assert all(isinstance(m.created, int) and m.created > 0 and m.owned_by == "splice" for m in listed)
    one = client.models.retrieve("a0")
    assert one.id == "a0" and one.object == "model" and one.created == listed[1].created
    assert client.models.retrieve("tiny-bert").parent is None
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.models.retrieve("nope")


def test_chat_content_as_text_parts(decoder_server):
    client, _, reference = decoder_server
    parts = [{"type": "text", "text": "hey"}, {"type": "text", "text": "you"}]
    answer = client.chat.completions.create(model="g0", messages=[{"role": "user", "content": parts}],
                                            max_tokens=4, temperature=0)
    assert answer.choices[0].message.content == greedy_alone(reference, "g0", "user: hey\nyou\nassistant: ", 4)
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.content\[1\].*image_url"):
        client.chat.completions.create(model="g0", messages=[{"role": "user", "content": image}])


def test_max_completion_tokens_bounds_the_answer(decoder_server):
    client, _, reference = decoder_server
    answer = client.chat.completions.create(model="g1", messages=[{"role": "user", "content": "hi"}],
                                            max_completion_tokens=3, temperature=0)
    assert answer.usage.completion_tokens <= 3
    assert answer.choices[0].message.content == greedy_alone(reference, "g1", "user: hi\nassistant: ", 3)
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        client.chat.completions.create(model="g1", messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=3, max_tokens=5)


@pytest.mark.parametrize("chat", [True, False])
def test_stream_options_include_usage_ends_with_a_usage_chunk(decoder_server, chat):
    client, _, _ = decoder_server
    options = {"model": "g0", "max_tokens": 5, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}
    if chat:
        whole = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **{
            **options, "stream": False, "stream_options": None})
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **options))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        expected = whole.choices[0].message.content
    else:
        whole = client.completions.create(prompt="abc", **{**options, "stream": False, "stream_options": None})
        chunks = list(client.completions.create(prompt="abc", **options))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        expected = whole.choices[0].text
    assert text == expected
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)


@pytest.mark.parametrize("endpoint, fields, named", [
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ("chat", {"tool_choice": "auto"}, "tool_choice"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ("chat", {"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ("chat", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("chat", {"seed": -1}, "seed must be between"),
    ("chat", {"n": 9}, "n must be between 1 and 8"),
    ("chat", {"stream_options": {"include_usage": True}}, "stream_options without stream"),
    ("completions", {"max_tokens": 0}, r"max_tokens must be between 1 and .* \(0 only with echo\)"),
    ("completions", {"best_of": 2}, "best_of"),
    ("completions", {"suffix": "end"}, "suffix"),
    ("completions", {"logprobs": 6}, "logprobs must be between 0 and 5"),
])
def test_fields_splice_does_not_implement_are_refused_by_name(decoder_server, endpoint, fields, named):
    client, _, _ = decoder_server
    with pytest.raises(openai.BadRequestError, match=named):
        if endpoint == "chat":
            client.chat.completions.create(model="g0", messages=[{"role": "user", "content": "hi"}], **fields)
        else:
            client.completions.create(model="g0", prompt="hi", **fields)
    # what means "not asked for" is accepted
    chat = client.chat.completions.create(model="g0", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          response_format={"type": "text"}, tool_choice="none", n=1, logprobs=False)
    text = client.completions.create(model="g0", prompt="hi", max_tokens=2, echo=False, best_of=1, suffix=None)
    assert chat.choices[0].finish_reason in ("stop", "length") and text.choices[0].finish_reason in ("stop", "length")
