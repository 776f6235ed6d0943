"""A size limit on request bodies, enforced before they are parsed (HTTP 413).

Without it a request far larger than any real one (64 texts of 1 MB) was read, parsed
and tokenized whole before any length check, while other requests waited. Here its
``Content-Length`` alone refuses it; a body sent without one (chunked) is refused as
soon as it passes the limit. A body within the limit is read here, as the app would
read it anyway, and handed on unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, refusal


class BodyLimit:
    """ASGI middleware: answer bodies over ``max_bytes`` with a 413 in the API's error shape, unread."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send, f"{declared} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, f"more than {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        error = PayloadTooLarge(f"The request body is {size}; this server takes at most {self.max_bytes} "
                                "(Limits.max_body_bytes). Send fewer or shorter texts per request.")
        status, body = refusal(error)
        await JSONResponse(body, status_code=status)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server's HTTP parser refuses these; nothing to decide here
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that gives the body read here, then whatever comes next (a disconnect) from the client."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
