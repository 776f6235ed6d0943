"""The HTTP API (FastAPI): classify, embeddings, OpenAI-style completions, adapters, aliases, health, metrics.

Every handler resolves the requested name (an alias picks one of its targets,
``""`` / ``"base"`` means no adapter), turns the body into a job, submits it to the
:class:`~splice.serve.engine.Engine` and awaits the answer, so the event loop never
waits on the model. Refusals are JSON ``{"error": {"message", "type"}}`` with a 4xx
status (429 with ``Retry-After`` when the queue is full); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..adapter import BASE_NAME, check_name
from ..errors import SpliceError
from ..hub import Hub
from . import openai
from .aliases import AliasTable, make_alias
from .engine import Engine
from .errors import BadRequest, Conflict, NotFound, Overloaded, ServeError
from .jobs import CLASSIFY, EMBED, EncodeJob, GenerateJob, Job
from .metrics import CONTENT_TYPE
from .schemas import AliasRequest, ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingsRequest, LoadRequest


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

    app = FastAPI(title="splice serve", version="1", lifespan=lifespan,
                  description=f"One base model ({base_name}), many adapters, over HTTP.")
    aliases = AliasTable()
    app.state.engine, app.state.aliases = engine, aliases
    residency, metrics, limits = engine.residency, engine.metrics, engine.limits

    # -- errors and bookkeeping ------------------------------------------------------------------
    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors()[:5]:
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg')}")
        return error(400, "Invalid request: " + "; ".join(problems), "invalid_request_error")

    @app.exception_handler(SpliceError)
    async def refused(request: Request, exc: SpliceError) -> JSONResponse:
        status = exc.status if isinstance(exc, ServeError) else 400
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return error(status, str(exc), type(exc).__name__, headers)

    @app.exception_handler(RuntimeError)
    async def failed(request: Request, exc: RuntimeError) -> JSONResponse:
        return error(500, str(exc), "internal_error")

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

    async def answer(job: Job):
        """Submit ``job`` and wait for its one answer (its error re-raised here)."""
        engine.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), request_timeout)
        except asyncio.TimeoutError:
            raise ServeError(f"The request did not finish within {request_timeout:.0f} s.") from None
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
        return items

    # -- inference ------------------------------------------------------------------------------------
    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        """Labels and scores for each input, from the adapter's classification head."""
        adapter = resolve(request, body.adapter)
        results = await answer(EncodeJob(adapter, texts=texts(body.inputs, "inputs"), task=CLASSIFY))
        return JSONResponse({"adapter": _public(adapter), "results": results},
                            headers={"X-Splice-Adapter": _public(adapter)})

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """Mean-pooled, unit-length last hidden states (OpenAI's embeddings format)."""
        adapter = resolve(request, body.model)
        job = EncodeJob(adapter, texts=texts(body.input, "input"), task=EMBED)
        vectors = await answer(job)
        tokens = sum(len(ids) for ids in job.ids or ())
        return {"object": "list", "model": _public(adapter) or base_name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def complete(request: Request, body, prompts: list[str], chat: bool):
        if not engine.can_generate:
            raise BadRequest(f"The base model {base_name!r} does not generate text; serve a causal language model "
                             "(such as --model smollm2) for completions, or use /v1/classify and /v1/embeddings.")
        refused = body.refusals()
        if refused:
            raise BadRequest(f"splice serve does not implement {', '.join(refused)}.")
        if not 1 <= body.max_tokens <= limits.max_new_tokens:
            raise BadRequest(f"max_tokens must be between 1 and {limits.max_new_tokens}, got {body.max_tokens}.")
        if not 0 <= body.temperature <= 100 or not 0 < body.top_p <= 1:
            raise BadRequest("temperature must be in [0, 100] (0: greedy) and top_p in (0, 1].")
        adapter = resolve(request, body.model, body.user)
        job = GenerateJob(adapter, prompts=prompts, special_tokens=not chat, max_tokens=body.max_tokens,
                          temperature=float(body.temperature), top_p=float(body.top_p), stop=body.stops)
        name = _public(adapter) or base_name
        headers = {"X-Splice-Adapter": name}
        if body.stream:
            pieces = openai.attach_stream(job)
            engine.submit(job)
            return StreamingResponse(openai.events(job, pieces, name, chat, request_timeout),
                                     media_type="text/event-stream", headers=headers)
        choices = await answer(job)
        return JSONResponse(openai.response(job, choices, name, chat), headers=headers)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI-compatible text completion; ``model`` names the adapter or alias (``""``: the base)."""
        return await complete(request, body, texts(body.prompt, "prompt"), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        """OpenAI-compatible chat completion, the prompt built by the tokenizer's chat template."""
        if not body.messages:
            raise BadRequest("messages is empty: send at least one message.")
        if not getattr(engine.tokenizer, "chat_template", None):
            raise BadRequest("This model's tokenizer has no chat template; use /v1/completions with a plain prompt.")
        messages = [m.model_dump() for m in body.messages]
        try:
            prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as failure:
            raise BadRequest(f"The chat template refused these messages: {failure}") from failure
        return await complete(request, body, [prompt], chat=True)

    # -- adapters and aliases -----------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        """The base model, every served adapter (``parent``: the base) and every alias."""
        data = [{"id": base_name, "object": "model", "owned_by": "splice", "parent": None}]
        for name in residency.names():
            try:
                entry = residency.entry(name)
            except NotFound:  # unloaded while we listed
                continue
            data.append({"id": name, "object": "model", "owned_by": "splice", "parent": base_name,
                         "state": entry.tier, "pinned": entry.pinned, **entry.info,
                         **({"error": entry.error} if entry.error else {})})
        for alias in aliases.all():
            data.append({"id": alias.name, "object": "model", "owned_by": "splice", "parent": base_name,
                         "alias": alias.split})
        return {"object": "list", "data": data}

    @app.post("/v1/adapters", status_code=201)
    async def load_adapter(body: LoadRequest):
        """Load an adapter from a folder or the registry; it is served once fully read."""
        if body.name is not None and body.name in aliases:
            raise Conflict(f"{body.name!r} is an alias; pick another name for the adapter.")
        # Looking at the folder touches the file system (its adapter.json names it): off the event loop.
        future = await asyncio.to_thread(residency.load, body.source, body.name, body.pin, hub)
        try:
            name = await asyncio.wait_for(asyncio.wrap_future(future), load_timeout)
        except asyncio.TimeoutError:
            raise ServeError(f"Loading {body.source!r} took longer than {load_timeout:.0f} s.") from None
        engine.wake()
        entry = residency.entry(name)
        return {"id": name, "object": "model", "parent": base_name, "state": entry.tier, "pinned": entry.pinned,
                **entry.info}

    @app.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str):
        """Stop serving an adapter; requests already accepted for it are still answered."""
        users = aliases.pointing_at(name)
        if users:
            raise Conflict(f"Aliases {', '.join(users)} point at {name!r}; repoint or delete them first.")
        residency.unload(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.put("/v1/aliases/{alias}")
    async def put_alias(alias: str, body: AliasRequest):
        """Point an alias at one adapter or a weighted split (atomic: requests see the old or the new split)."""
        try:
            check_name(alias)
        except SpliceError as failure:
            raise BadRequest(str(failure).replace("adapter name", "alias name")) from failure
        if alias in residency:
            raise Conflict(f"{alias!r} is an adapter's name; an alias needs a name of its own.")
        missing = [t for t in body.targets if t not in residency]
        if missing:
            raise NotFound(f"Alias {alias!r} targets {missing}, which are not served (adapters: "
                           f"{', '.join(residency.names()) or 'none'}).")
        entry = make_alias(alias, body.targets)
        previous = aliases.set(entry)
        return {"alias": alias, "targets": entry.split, "previous": previous.split if previous else None}

    @app.get("/v1/aliases/{alias}")
    async def get_alias(alias: str):
        return {"alias": alias, "targets": aliases.get(alias).split}

    @app.get("/v1/aliases")
    async def list_aliases():
        return {"aliases": {a.name: a.split for a in aliases.all()}}

    @app.delete("/v1/aliases/{alias}")
    async def delete_alias(alias: str):
        aliases.remove(alias)
        return {"alias": alias, "deleted": True}

    # -- operations ---------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        body = {"status": "ok" if engine.accepting else "draining", "base": base_name,
                "queue_depth": engine.depth, "adapters": len(residency.names()), "time": time.time()}
        return JSONResponse(body, status_code=200 if engine.accepting else 503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _public(adapter: str) -> str:
    return "" if adapter == BASE_NAME else adapter
