"""The server's self-description: ``/openapi.json`` as the server really answers, and ``/docs`` that works offline.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN, so on a machine without
internet it is a blank page; ``fastapi-offline`` serves the same page with its
scripts and styles from the package itself (under ``/static-offline-docs``).
FastAPI also documents a 422 for every route that takes input, while this server
answers bad input with 400 in OpenAI's error shape; that 422 is removed, so the
schema lists only statuses the server sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

# What FastAPI adds for its default validation errors, which this server never sends (it answers 400).
_VALIDATION_STATUS = "422"
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def documented_app(**options: Any) -> FastAPI:
    """A FastAPI app (``options`` as for ``FastAPI``) whose ``/docs`` and ``/redoc`` need no network and whose
    OpenAPI schema leaves out FastAPI's 422 validation response."""
    app = FastAPIOffline(**options)

    def openapi() -> dict[str, Any]:
        schema = FastAPI.openapi(app)  # cached by FastAPI until the routes change; trimming it again is a no-op
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop(_VALIDATION_STATUS, None)
        components = schema.get("components", {}).get("schemas", {})
        for name in _VALIDATION_SCHEMAS:
            components.pop(name, None)
        return schema

    app.openapi = openapi
    return app
