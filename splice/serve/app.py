"""The HTTP API (FastAPI): classify, embeddings, OpenAI-style completions, adapters, aliases, health, metrics.

Every handler resolves the requested name (an alias picks one of its targets,
``""`` / ``"base"`` means no adapter), turns the body into a job, submits it to the
:class:`~splice.serve.engine.Engine` and awaits the answer, so the event loop never
waits on the model. Every refusal, FastAPI's own (bad JSON, unknown route) included, is
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (:mod:`.errors`) with the
status each route documents in ``/openapi.json`` (429 with ``Retry-After`` when the
queue is full); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..adapter import BASE_NAME, check_name
from ..errors import SpliceError
from ..hub import Hub, is_reference
from . import openai
from .aliases import AliasTable, make_alias
from .body_limit import BodyLimit
from .docs import documented_app
from .engine import Engine
from .errors import (
    NAME_SHOWN,
    BadRequest,
    Conflict,
    NotFound,
    Overloaded,
    TimedOut,
    documented,
    error_body,
    refusal,
    shown,
)
from .jobs import CLASSIFY, EMBED, EncodeJob, GenerateJob, Job
from .metrics import CONTENT_TYPE
from .residency import UNREADABLE_SOURCE, check_name_length, check_public_name
from .schemas import AliasRequest, ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingsRequest, LoadRequest

log = logging.getLogger("splice.serve")

# What each kind of route may answer besides success (every route with a body also answers 400 for a bad one).
INFERENCE_ERRORS = documented(400, 404, 413, 429, 500, 503, 504)
STREAMED = {200: {"description": "The completion; with \"stream\": true, server-sent events",
                  "content": {"text/event-stream": {}}}}


def create_app(engine: Engine, base_name: str = "base", hub: Hub | None = None,
               request_timeout: float = 300.0, load_timeout: float = 600.0) -> FastAPI:
    """The app serving ``engine``'s model as ``base_name``; ``hub`` is where ``name@version`` loads come from.

    The app starts the engine when it starts and drains it when it stops.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = documented_app(title="splice serve", version="1", lifespan=lifespan,
                         description=f"One base model ({base_name}), many adapters, over HTTP.")
    aliases = AliasTable()
    app.state.engine, app.state.aliases = engine, aliases
    residency, metrics, limits = engine.residency, engine.metrics, engine.limits

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    # -- errors and bookkeeping ------------------------------------------------------------------
    def error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's validation errors (422, a list of dicts) as one readable 400, like every other refusal;
        ``param`` is the first field at fault, as OpenAI names it (``inputs``, not ``inputs.list[str].0``)."""
        errors = exc.errors()
        problems = "; ".join(f"{_field(item.get('loc', ()))}: {item.get('msg')}" for item in errors[:5])
        first = tuple(errors[0].get("loc", ())) if errors else ()
        param = _field(first[1:2]) if first[:1] == ("body",) and len(first) > 1 else None
        return error(400, "Invalid request: " + problems, param=param)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (404 unknown route, 405 wrong method), in the same shape."""
        hint = {404: "no such route", 405: "this route does not take that method"}.get(exc.status_code)
        message = f"{exc.detail}: {hint}; the API is described at /docs." if hint else str(exc.detail)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette lists the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(_methods_at(app, request.scope))}
        return error(exc.status_code, message, headers=headers)

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        """Our refusals, the engine's failures and bugs alike (Starlette logs a bug's traceback)."""
        status, body = refusal(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return JSONResponse(body, status_code=status, headers=headers)

    for caught in (SpliceError, RuntimeError, Exception):
        app.add_exception_handler(caught, refused)

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unknown"
        adapter = getattr(request.state, "adapter", "")
        metrics.requests.inc(endpoint=endpoint, adapter=adapter, status=str(response.status_code))
        return response

    def resolve(request: Request, name: str, request_id: str | None = None) -> str:
        """A served adapter's public name (an alias picks one target), or ``__base__``."""
        if name in aliases:
            chosen = aliases.get(name).pick(request_id or request.headers.get("x-request-id"))
        elif name in residency:
            chosen = name
        elif name in ("", "base", BASE_NAME, base_name):  # after the names: an adapter may be called "base"
            chosen = BASE_NAME
        else:
            raise residency.not_found(name)
        request.state.adapter = chosen
        return chosen

    async def submit(job: Job) -> None:
        """Tokenize ``job`` on a thread (never on the event loop, never on the model's worker), then queue it."""
        await asyncio.to_thread(engine.prepare, job)
        engine.submit(job)

    async def answer(job: Job):
        """Submit ``job`` and wait for its one answer (its error re-raised here)."""
        await submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), request_timeout)
        except asyncio.TimeoutError:
            raise TimedOut(f"The request did not finish within {request_timeout:.0f} s.") from None
        finally:
            if isinstance(job, GenerateJob):
                job.cancel.set()  # a client that left (task cancelled) stops its generation

    def texts(value, field: str) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise BadRequest(f"{field} is empty: send at least one text.")
        if any(not text for text in items):
            raise BadRequest(f"{field} holds an empty string: every text needs some content.")
        if len(items) > limits.max_inputs:
            raise BadRequest(f"{field} holds {len(items)} texts; at most {limits.max_inputs} per request.")
        for i, text in enumerate(items):
            check_text_length(text, field if isinstance(value, str) else f"{field}[{i}]")
        return items

    def check_text_length(text: str, where: str) -> None:
        """Refuse a text longer than any the model could take, before tokenizing it (which costs as it grows)."""
        if len(text) > limits.max_input_chars:
            raise BadRequest(f"{where} is {len(text)} characters long; this server takes at most "
                             f"{limits.max_input_chars} per text (the model reads {limits.max_input_tokens} tokens "
                             "at most). Shorten it.")

    # -- inference ------------------------------------------------------------------------------------
    @app.post("/v1/classify", responses=INFERENCE_ERRORS)
    async def classify(body: ClassifyRequest, request: Request):
        """Labels and scores for each input, from the adapter's classification head."""
        adapter = resolve(request, body.adapter)
        results = await answer(EncodeJob(adapter, texts=texts(body.inputs, "inputs"), task=CLASSIFY))
        return JSONResponse({"adapter": _public(adapter), "results": results},
                            headers={"X-Splice-Adapter": _public(adapter)})

    @app.post("/v1/embeddings", responses=INFERENCE_ERRORS)
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """Mean-pooled, unit-length last hidden states (OpenAI's embeddings format)."""
        body.check()
        adapter = resolve(request, body.model)
        job = EncodeJob(adapter, texts=texts(body.input, "input"), task=EMBED)
        vectors = await answer(job)
        tokens = sum(len(ids) for ids in job.ids or ())
        data = [{"object": "embedding", "index": i, "embedding": openai.embedding(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "model": _public(adapter) or base_name, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def token_text(token: int) -> str:
        return engine.tokenizer.decode([token])

    async def complete(request: Request, body, prompts: list[str], chat: bool):
        if not engine.can_generate:
            raise BadRequest(f"The base model {base_name!r} does not generate text; serve a causal language model "
                             "(such as --model smollm2) for completions, or use /v1/classify and /v1/embeddings.")
        body.check(limits.max_new_tokens)
        adapter = resolve(request, body.model, body.user)
        job = GenerateJob(adapter, prompts=prompts, special_tokens=not chat, max_tokens=body.new_tokens,
                          temperature=float(body.temperature), top_p=float(body.top_p), stop=body.stops,
                          n=body.n, logprobs=body.top_logprobs_wanted, echo=body.echo_prompt, seed=body.seed)
        name = _public(adapter) or base_name
        headers = {"X-Splice-Adapter": name}
        if body.stream:
            pieces = openai.attach_stream(job)
            await submit(job)
            return StreamingResponse(openai.events(job, pieces, name, chat, request_timeout, token_text,
                                                   body.include_usage),
                                     media_type="text/event-stream", headers=headers)
        choices = await answer(job)
        return JSONResponse(openai.response(job, choices, name, chat, token_text), headers=headers)

    @app.post("/v1/completions", responses={**STREAMED, **INFERENCE_ERRORS})
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI-compatible text completion; ``model`` names the adapter or alias (``""``: the base)."""
        return await complete(request, body, texts(body.prompt, "prompt"), chat=False)

    @app.post("/v1/chat/completions", responses={**STREAMED, **INFERENCE_ERRORS})
    async def chat_completions(body: ChatRequest, request: Request):
        """OpenAI-compatible chat completion, the prompt built by the tokenizer's chat template."""
        if not body.messages:
            raise BadRequest("messages is empty: send at least one message.")
        if not getattr(engine.tokenizer, "chat_template", None):
            raise BadRequest("This model's tokenizer has no chat template; use /v1/completions with a plain prompt.")
        messages = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(body.messages)]
        for i, message in enumerate(messages):
            check_text_length(message["content"], f"messages[{i}].content")
        try:
            prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as failure:
            raise BadRequest(f"The chat template refused these messages: {failure}") from failure
        check_text_length(prompt, "the chat prompt (the messages in the chat template)")
        return await complete(request, body, [prompt], chat=True)

    # -- adapters and aliases -----------------------------------------------------------------------
    base = {"id": base_name, "object": "model", "created": int(time.time()), "owned_by": "splice", "parent": None}

    def describe(name: str) -> dict:
        """One model object (OpenAI's fields, then splice's): an alias, a served adapter or the base, looked up
        in the order requests resolve names; :class:`NotFound` if none."""
        card = {"id": name, "object": "model", "owned_by": "splice", "parent": base_name}
        if name in aliases:
            alias = aliases.get(name)
            return {**card, "created": alias.created, "alias": alias.split}
        if name in residency:
            entry = residency.entry(name)
            return {**card, "created": entry.created, "state": entry.tier, "pinned": entry.pinned, **entry.info,
                    **({"error": entry.error} if entry.error else {})}
        if name == base_name:
            return dict(base)
        raise NotFound(f"No model named {name!r} is served; GET /v1/models lists them.")

    @app.get("/v1/models")
    async def models():
        """The base model, every served adapter (``parent``: the base) and every alias."""
        data = [dict(base)]
        for name in [*residency.names(), *(alias.name for alias in aliases.all())]:
            try:
                data.append(describe(name))
            except NotFound:  # unloaded while we listed
                continue
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}", responses=documented(404))
    async def model(model_id: str):
        """One model: the base, a served adapter or an alias, as in ``GET /v1/models``."""
        return describe(model_id)

    @app.post("/v1/adapters", status_code=201, responses=documented(400, 409, 504))
    async def load_adapter(body: LoadRequest):
        """Load an adapter from a folder or the registry; it is served once fully read.

        Why a folder or a registry entry could not be read goes to the server's log, not to
        the client: the answer never tells whether a path exists on the server, nor where its files are.
        """
        if body.name is not None:
            check_public_name(body.name)
            if body.name in aliases:
                raise Conflict(f"{shown(body.name)} is an alias; pick another name for the adapter.")
        try:
            # Looking at the folder touches the file system (its adapter.json names it): off the event loop.
            future = await asyncio.to_thread(residency.load, body.source, body.name, body.pin, hub)
            name = await asyncio.wait_for(asyncio.wrap_future(future), load_timeout)
        except asyncio.TimeoutError:
            raise TimedOut(f"Loading {shown(body.source)} took longer than {load_timeout:.0f} s.") from None
        except Conflict:
            raise
        except Exception as failure:  # noqa: BLE001 - also OSError (name too long, permissions), NUL bytes, ...
            if isinstance(failure, BadRequest) and is_reference(body.source):
                raise  # about the name@version the client wrote, not about the server's files
            log.warning("POST /v1/adapters cannot load %s: %s", shown(body.source), failure)
            raise BadRequest(UNREADABLE_SOURCE, param="source") from None
        engine.wake()
        return describe(name)

    @app.delete("/v1/adapters/{name:path}", responses=documented(404, 409))
    async def unload_adapter(name: str):
        """Stop serving an adapter. It answers the requests already accepted for it, then leaves the model
        (its device slot and memory freed); the answer comes then, so its name can be loaded again at once."""
        users = aliases.pointing_at(name)
        if users:
            raise Conflict(f"Aliases {', '.join(users)} point at {shown(name)}; repoint or delete them first.")
        gone = residency.unload(name)  # new requests for it get 404 from here on
        try:
            await asyncio.wait_for(asyncio.wrap_future(gone), request_timeout)
        except asyncio.TimeoutError:  # its accepted requests still run: the worker drops it after them
            pass
        return {"id": name, "object": "model", "deleted": True}

    @app.put("/v1/aliases/{alias}", responses=documented(400, 404, 409))
    async def put_alias(alias: str, body: AliasRequest):
        """Point an alias at one adapter or a weighted split (atomic: requests see the old or the new split)."""
        try:
            check_name(check_name_length(alias, "alias"))
        except SpliceError as failure:
            raise BadRequest(str(failure).replace("adapter name", "alias name")) from failure
        if alias in residency:
            raise Conflict(f"{alias!r} is an adapter's name; an alias needs a name of its own.")
        missing = [t for t in body.targets if t not in residency]
        if missing:
            listed = ", ".join(shown(t) for t in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise NotFound(f"Alias {alias!r} targets {len(missing)} adapters not served ({listed}; adapters: "
                           f"{', '.join(residency.names()) or 'none'}).", param="targets")
        entry = make_alias(alias, body.targets)
        previous = aliases.set(entry)
        return {"alias": alias, "targets": entry.split, "previous": previous.split if previous else None}

    @app.get("/v1/aliases/{alias}", responses=documented(404))
    async def get_alias(alias: str):
        return {"alias": alias, "targets": aliases.get(alias).split}

    @app.get("/v1/aliases")
    async def list_aliases():
        return {"aliases": {a.name: a.split for a in aliases.all()}}

    @app.delete("/v1/aliases/{alias}", responses=documented(404))
    async def delete_alias(alias: str):
        aliases.remove(alias)
        return {"alias": alias, "deleted": True}

    # -- operations ---------------------------------------------------------------------------------------
    @app.get("/health", responses={503: {"description": "Draining for shutdown (the same body, status \"draining\")"}})
    async def health():
        body = {"status": "ok" if engine.accepting else "draining", "base": base_name,
                "queue_depth": engine.depth, "adapters": len(residency.names()), "time": time.time()}
        return JSONResponse(body, status_code=200 if engine.accepting else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app



def _public(adapter: str) -> str:
    return "" if adapter == BASE_NAME else adapter


def _methods_at(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route takes on the request's path (for a 405's ``Allow``)."""
    methods = {method for route in app.router.routes if route.matches(scope)[0] is not Match.NONE
               for method in getattr(route, "methods", None) or ()}
    return sorted(methods)


def _field(loc: tuple) -> str:
    """Where a validation error is, as ``targets.x``: the body's own fields, client-chosen keys cut short."""
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(part if len(part) <= NAME_SHOWN else shown(part) for part in parts) or "body"
