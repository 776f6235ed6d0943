"""``splice serve --replicas N``: N engine replicas under Ray Serve, each adapter's requests kept together.

Two deployments. :class:`EngineReplica` (``N`` replicas) is a whole single-process server:
the app of :func:`splice.cli.serve_app.build_app` over its own engine, called in-process
(ASGI). :class:`Ingress` (one replica, behind Ray Serve's HTTP proxy) reads the adapter
a request names (``model``, or ``adapter`` for ``/v1/classify``) and calls the engine
deployment with it as the *multiplexed model id*: Ray Serve's model multiplexing sends
it to a replica that has that adapter loaded when one exists, so an adapter's requests
share a replica's batches and its device slot instead of loading everywhere. A replica
"loads" an id through :meth:`EngineReplica.adapter` (``serve.multiplexed``, at most
``--device-slots`` per replica), which puts the adapter on its model.

Streamed answers (server-sent events) stream through: the replica runs its app as
ASGI itself (:func:`asgi_stream`) and hands each piece on as a Ray Serve streaming
response, which the ingress sends on as it comes. What does not cross replicas yet:
changes to adapters and aliases over HTTP are refused (each replica would hold its
own; give them at start with ``--adapters``), and ``/metrics`` is each replica's own
(Ray Serve's metrics cover the routing). Ray is an extra: ``pip install 'splice[ray]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from ..errors import SpliceError

try:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
except ImportError:  # the ray extra is missing: serve_replicas says so in one line
    serve = None

REPLICA_HEADER = "x-splice-replica"  # which replica answered (tests and operators check affinity with it)
CHANGES = ("/v1/adapters", "/v1/aliases")  # their writes would reach one replica only


def _require_ray() -> None:
    if serve is None:
        raise SpliceError("--replicas and --ray-address need Ray Serve: pip install 'splice[ray]'.")


def adapter_of(path: str, body: bytes) -> str:
    """The adapter (or alias) a request names: its routing key; "" for the base or a body without one."""
    if not path.startswith("/v1/") or not body:
        return ""
    try:
        fields = json.loads(body)
    except ValueError:
        return ""  # the replica answers the bad JSON
    name = fields.get("model", fields.get("adapter", "")) if isinstance(fields, dict) else ""
    return name if isinstance(name, str) and name not in ("base", "") else ""


class EngineReplica:
    """One engine and its app, as ``splice serve`` builds them from ``options`` (the command line's)."""

    def __init__(self, options: dict):
        from .common import Steps
        from .serve_app import build_app

        self.app, self.engine, _, _ = build_app(argparse.Namespace(**options), Steps(True))
        self.engine.start()
        self.name = f"{os.getpid()}-{time.monotonic_ns()}"

    async def adapter(self, name: str) -> str:
        """Put adapter ``name`` on this replica's model (Ray Serve calls it once per id the replica takes)."""
        if name in self.engine.residency:
            await asyncio.to_thread(self.engine.residency.preload, [name])
        return name

    async def handle(self, method: str, path: str, body: bytes, headers: dict):
        """Run one HTTP request through this replica's app: yields its status and headers, then its body as the app
        sends it (a streamed completion piece by piece). Called as a Ray Serve streaming method."""
        name = serve.get_multiplexed_model_id()
        if name:
            await self.adapter(name)  # through serve.multiplexed: Ray Serve learns this replica holds it
        async for item in asgi_stream(self.app, method, path, body, headers):
            yield ({**item[0], REPLICA_HEADER: self.name}, item[1]) if isinstance(item, tuple) else item

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop(timeout=5)


class Ingress:
    """The HTTP entry: routes each request to an engine replica by the adapter it names."""

    def __init__(self, engines):
        self.engines = engines

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET" and request.url.path.startswith(CHANGES):
            return JSONResponse({"error": {"message": "With --replicas, adapters and aliases are given at start "
                                           "(--adapters); loading, unloading and aliasing over HTTP would change "
                                           "one replica only.", "type": "invalid_request_error", "param": None,
                                           "code": None}}, status_code=400)
        adapter = adapter_of(request.url.path, body)
        handle = self.engines.options(multiplexed_model_id=adapter, stream=True) if adapter \
            else self.engines.options(stream=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        pieces = handle.handle.remote(request.method, path, body, headers)
        answer_headers, status = await pieces.__anext__()
        kept = {k: v for k, v in answer_headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        if answer_headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(pieces, status_code=status, headers=kept)
        return Response(b"".join([piece async for piece in pieces]), status_code=status, headers=kept)


async def asgi_stream(app, method: str, path: str, body: bytes, headers: dict):
    """Call the ASGI ``app`` with one request; yield ``(headers, status)`` first, then each body piece as the app
    sends it (``httpx.ASGITransport`` would wait for the whole body). When the caller stops reading (its client
    left), the app is told the client disconnected, as uvicorn would, so a streamed completion frees its row."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 0), "server": ("replica", 80)}
    messages: asyncio.Queue = asyncio.Queue()
    request_sent, left = False, asyncio.Event()

    async def receive() -> dict:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    task = asyncio.ensure_future(app(scope, receive, messages.put))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield {k.decode(): v.decode() for k, v in message.get("headers", [])}, message["status"]
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
    finally:
        left.set()
        await task


def application(options: dict, replicas: int, slots: int):
    """The Ray Serve application: ``replicas`` engine replicas behind one ingress."""
    _require_ray()

    class Replica(EngineReplica):  # the multiplexing limit is the command line's --device-slots
        @serve.multiplexed(max_num_models_per_replica=slots)
        async def adapter(self, name: str) -> str:
            return await EngineReplica.adapter(self, name)

    engine = serve.deployment(Replica, name="engine", num_replicas=replicas, ray_actor_options={"num_cpus": 0})
    ingress = serve.deployment(Ingress, name="ingress", ray_actor_options={"num_cpus": 0})
    return ingress.bind(engine.bind(options))


def serve_replicas(args: argparse.Namespace) -> int:
    """``splice serve --replicas N``: start (or join) Ray, run the application on ``--host:--port``, block."""
    _require_ray()
    import ray

    options = {k: v for k, v in vars(args).items() if k not in ("run", "replicas", "ray_address")}
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=not args.quiet)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(options, args.replicas, args.device_slots), name="splice")
    print(f"splice serve: http://{args.host}:{args.port}  ({args.replicas} replicas under Ray Serve)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
