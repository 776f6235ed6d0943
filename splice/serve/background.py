"""Run an app under uvicorn in a background thread (notebooks, tests, benchmarks): ``with serving(app) as url``."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from ..errors import SpliceError


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
            stop_timeout: float = 60.0) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve ``app`` on ``host:port`` (0: a free port) until the block ends; yields the base URL and the server.

    Leaving the block shuts down gracefully: uvicorn stops accepting, waits for the
    requests in flight, then the app's lifespan drains and stops its engine.
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="splice-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        raise SpliceError(f"The server did not start on {host}:{port} within {start_timeout:.0f} s.")
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}", server
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        if thread.is_alive():
            raise SpliceError(f"The server did not stop within {stop_timeout:.0f} s.")
