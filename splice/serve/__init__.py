"""splice serve: one frozen base model, many adapters, over HTTP (see DESIGN.md §9).

    from splice.serve import Engine, create_app
    engine = Engine(model, tokenizer, max_batch_size=32, max_wait_ms=5)
    engine.residency.add_source("sentiment", lambda: Path("out/sentiment"))
    app = create_app(engine, base_name="minilm")          # run it with uvicorn

:mod:`.engine` batches requests across adapters into one forward (per-row
routing) on one worker thread; :mod:`.residency` keeps the adapters in use on the
model and the rest in memory or on disk; :mod:`.aliases` splits traffic for A/B
tests; :mod:`.metrics` writes Prometheus text; :mod:`.app` is the FastAPI app.

This package needs the ``serve`` extra (FastAPI, uvicorn, fastapi-offline for a ``/docs`` page that works
without internet); ``import splice`` does not import it.
"""

from __future__ import annotations

from ..errors import SpliceError

try:
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise SpliceError(
        f"splice serve needs FastAPI, fastapi-offline and uvicorn ({missing.name} is not installed): "
        "pip install 'splice[serve]'"
    ) from missing

from .aliases import Alias, AliasTable
from .app import create_app
from .engine import Engine
from .errors import BadRequest, Conflict, NotFound, Overloaded, PayloadTooLarge, ServeError, ShuttingDown, TimedOut
from .jobs import EncodeJob, GenerateJob, Limits
from .metrics import Metrics
from .residency import Residency

__all__ = [
    "Alias",
    "AliasTable",
    "BadRequest",
    "Conflict",
    "EncodeJob",
    "Engine",
    "GenerateJob",
    "Limits",
    "Metrics",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Residency",
    "ServeError",
    "ShuttingDown",
    "TimedOut",
    "create_app",
]
