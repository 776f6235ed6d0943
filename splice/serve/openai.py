"""OpenAI-compatible response bodies: completions and chat completions (whole, or streamed as server-sent
events) and embeddings.

The text of every choice arrives from the engine's worker thread through the job's
``sink``; here it is handed to the event loop and written as ``data: {...}`` lines,
ending with ``data: [DONE]``, as OpenAI's streaming API does (with
``stream_options.include_usage``, a last chunk before it carries the usage). A
client that goes away cancels its job, which ends its rows at the next generated token.

Log-probabilities (``logprobs``) take OpenAI's shapes: for completions, lists of
``tokens``, ``token_logprobs``, ``top_logprobs`` (token -> logprob) and ``text_offset``
(characters into the choice's text); for chat, ``content``: one
``{token, logprob, bytes, top_logprobs}`` per token. A streamed choice carries all
of them on its last chunk (the one with its ``finish_reason``): streamed text is held
back at possible stop strings, so its pieces do not line up with tokens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable

from .errors import TimedOut, refusal
from .jobs import GenerateJob

TokenText = Callable[[int], str]  # a token id's text


def completion_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(job: GenerateJob, choices: list[dict]) -> dict:
    prompt = sum(c["prompt_tokens"] for c in choices)
    completion = sum(c["completion_tokens"] for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response(job: GenerateJob, choices: list[dict], model: str, chat: bool, token_text: TokenText) -> dict:
    """The whole (non-streamed) answer."""
    if chat:
        body = [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                 "logprobs": logprobs(c, chat, token_text), "finish_reason": c["finish_reason"]}
                for i, c in enumerate(choices)]
    else:
        body = [{"index": i, "text": c["text"], "logprobs": logprobs(c, chat, token_text),
                 "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)]
    return {"id": completion_id(chat), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": body, "usage": usage(job, choices)}


def logprobs(choice: dict, chat: bool, token_text: TokenText) -> dict | None:
    """A choice's ``logprobs`` object (None if the request did not ask for them)."""
    if "scores" not in choice:
        return None
    texts = [token_text(token) for token in choice["tokens"]]
    if chat:
        def entry(text: str, logprob: float) -> dict:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**entry(text, logprob), "top_logprobs": [entry(token_text(t), v) for t, v in top.items()]}
                            for text, (logprob, top) in zip(texts, choice["scores"])], "refusal": None}
    offsets, at = [], 0
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {"tokens": texts,
            "token_logprobs": [None if score is None else score[0] for score in choice["scores"]],
            "top_logprobs": [None if score is None else {token_text(t): v for t, v in score[1].items()}
                             for score in choice["scores"]],
            "text_offset": offsets}


def embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    """One vector as the client asked: a list of floats, or (``"base64"``, the openai client's default) its
    little-endian float32 bytes in base64, which the client decodes with ``numpy.frombuffer(..., "float32")``."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def attach_stream(job: GenerateJob) -> asyncio.Queue:
    """Give ``job`` a sink that passes each (choice, text) piece from the worker thread to this event loop."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    job.sink = lambda choice, text: loop.call_soon_threadsafe(pieces.put_nowait, (choice, text))
    return pieces


async def events(job: GenerateJob, pieces: asyncio.Queue, model: str, chat: bool, timeout: float,
                 token_text: TokenText, include_usage: bool = False) -> AsyncIterator[str]:
    """Server-sent events for a streamed completion: text pieces as they come, then each choice's finish reason,
    then (``include_usage``) a chunk with no choices and the usage; until then every chunk has ``usage: null``."""
    ident, created = completion_id(chat), int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def send(choices: list[dict], **extra) -> str:
        body = {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps({**body, **extra})}\n\n"

    def chunk(choice: int, text: str | None, finish: str | None = None, role: bool = False,
              scores: dict | None = None) -> str:
        if chat:
            delta = {"role": "assistant"} if role else ({"content": text} if text is not None else {})
            return send([{"index": choice, "delta": delta, "logprobs": scores, "finish_reason": finish}])
        return send([{"index": choice, "text": text or "", "logprobs": scores, "finish_reason": finish}])

    done = asyncio.wrap_future(job.future)
    deadline = time.monotonic() + timeout
    try:
        if chat:
            for choice in range(job.rows):
                yield chunk(choice, None, role=True)
        while not done.done():
            getter = asyncio.ensure_future(pieces.get())
            finished, _ = await asyncio.wait({getter, done}, timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                yield chunk(*getter.result())
                continue
            getter.cancel()
            if not finished:  # the deadline passed
                job.cancel.set()
                late = TimedOut(f"The request did not finish within {timeout:.0f} s.")
                yield f"data: {json.dumps(refusal(late)[1])}\n\n"
                return
        while not pieces.empty():  # pieces sent before the answer was set are all queued by now
            yield chunk(*pieces.get_nowait())
        error = done.exception()
        if error is not None:
            yield f"data: {json.dumps(refusal(error)[1])}\n\n"  # the shape of every other refusal
        else:
            for choice, answer in enumerate(done.result()):
                yield chunk(choice, None if chat else "", finish=answer["finish_reason"],
                            scores=logprobs(answer, chat, token_text))
            if include_usage:
                yield send([], usage=usage(job, done.result()))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # the client left early (or we are done): stop generating for it
