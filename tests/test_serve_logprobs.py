"""logprobs, echo, n and seed through the official ``openai`` client, against uvicorn on 127.0.0.1 (port 0)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from splice.serve.background import serving
from splice.serve.generation import nucleus

from serving import char_tokenizer, decoder_app, greedy_alone


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app, reference = decoder_app(tmp_path_factory.mktemp("decoder"), max_wait_ms=1)
    with serving(app) as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30.0), url, reference


def test_completion_logprobs_have_openais_shape_and_the_greedy_token_on_top(server):
    client, _, reference = server
    answer = client.completions.create(model="g0", prompt="hello", max_tokens=5, temperature=0, logprobs=3)
    choice = choice_of = answer.choices[0]
    logprobs = choice.logprobs
    count = answer.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == count
    assert "".join(logprobs.tokens) == choice_of.text == greedy_alone(reference, "g0", "hello", 5)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(count)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) == 3 and logprob <= 0
        assert max(top, key=top.get) == token and math.isclose(top[token], logprob, abs_tol=1e-6)


def test_echo_with_no_new_tokens_scores_the_prompt(server):
    client, _, reference = server
    answer = client.completions.create(model="g1", prompt="hello", max_tokens=0, echo=True, logprobs=0,
                                       temperature=0)
    logprobs = answer.choices[0].logprobs
    assert answer.choices[0].text == "hello" and logprobs.tokens == list("hello")
    ids = char_tokenizer()("hello")["input_ids"]
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids]), adapter_names=["g1"]).logits[0]
    expected = logits.log_softmax(-1)[torch.arange(len(ids) - 1), ids[1:]].tolist()
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(logprobs.token_logprobs[1:], expected))
    assert answer.usage.completion_tokens == 0


def test_chat_logprobs_and_top_logprobs(server):
    client, _, _ = server
    answer = client.chat.completions.create(model="g0", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            temperature=0, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert "".join(item.token for item in content) == answer.choices[0].message.content
    for item in content:
        assert item.bytes == list(item.token.encode()) and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].token == item.token and item.top_logprobs[0].logprob == pytest.approx(item.logprob)
    plain = client.chat.completions.create(model="g0", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_sampled_logprobs_are_those_of_the_distribution_sampled_from(server):
    client, _, reference = server
    hot = client.completions.create(model="g0", prompt="hey", max_tokens=4, temperature=0.5, top_p=0.5, seed=3,
                                    logprobs=5)
    logprobs = hot.choices[0].logprobs
    prompt = char_tokenizer()("hey")["input_ids"]
    ids = prompt + char_tokenizer()("".join(logprobs.tokens))["input_ids"]
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids]), adapter_names=["g0"]).logits[0, len(prompt) - 1:-1]
    sampled = nucleus(logits / 0.5, torch.tensor([[0.5]])).log_softmax(-1)
    chosen = sampled[torch.arange(len(ids) - len(prompt)), ids[len(prompt):]]
    assert torch.allclose(torch.tensor(logprobs.token_logprobs), chosen, atol=1e-4)
    raw = logits.log_softmax(-1)[torch.arange(len(ids) - len(prompt)), ids[len(prompt):]]
    assert not torch.allclose(chosen, raw, atol=1e-2)  # not the model's own distribution: the one sampled from
    for top in logprobs.top_logprobs:
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5


def test_n_and_seed(server):
    client, _, _ = server
    answer = client.completions.create(model="g1", prompt=["ab", "cd"], max_tokens=5, n=3, seed=11, temperature=1)
    again = client.completions.create(model="g1", prompt=["ab", "cd"], max_tokens=5, n=3, seed=11, temperature=1)
    assert [c.index for c in answer.choices] == list(range(6))
    assert [c.text for c in answer.choices] == [c.text for c in again.choices]
    chat = client.chat.completions.create(model="g1", messages=[{"role": "user", "content": "x"}], n=2,
                                          max_tokens=3, seed=5)
    assert [c.index for c in chat.choices] == [0, 1]


def test_streamed_n_choices_and_logprobs(server):
    client, _, _ = server
    options = {"model": "g0", "prompt": "abc", "max_tokens": 5, "n": 2, "seed": 4, "logprobs": 1}
    whole = client.completions.create(**options)
    texts, logprobs = {0: "", 1: ""}, {}
    for chunk in client.completions.create(**options, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.logprobs is not None:
                logprobs[choice.index] = choice.logprobs.token_logprobs
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert [logprobs[0], logprobs[1]] == [c.logprobs.token_logprobs for c in whole.choices]


def test_lm_eval_loglikelihood_request(server):
    """The body lm-evaluation-harness's ``local-completions`` sends for loglikelihood tasks."""
    _, url, _ = server
    body = {"model": "g0", "prompt": ["The cat", "A dog"], "max_tokens": 0, "echo": True, "logprobs": 1,
            "temperature": 0, "seed": 1234}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()
    for prompt, choice in zip(body["prompt"], answer["choices"]):
        assert choice["text"] == prompt and len(choice["logprobs"]["token_logprobs"]) == len(prompt)
        assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"][1:])
