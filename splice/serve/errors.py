"""What the server answers when it cannot do what a request asks: each error carries its HTTP status.

They subclass :class:`splice.SpliceError`, so they read like every other refusal
in splice: what was wrong and what to do instead.
"""

from __future__ import annotations

from ..errors import SpliceError


class ServeError(SpliceError):
    """A request the server refuses; ``status`` is the HTTP status the app answers with."""

    status = 400


class BadRequest(ServeError):
    """The request is well-formed JSON but asks for something invalid (empty input, too long, ...)."""


class NotFound(ServeError):
    """No adapter or alias of that name is being served."""

    status = 404


class Conflict(ServeError):
    """The name is already taken (by an adapter or an alias)."""

    status = 409


class PayloadTooLarge(ServeError):
    """The request body is larger than the server takes (``Limits.max_body_bytes``); it was not read."""

    status = 413


class Overloaded(ServeError):
    """The request queue is full; ``retry_after`` is a hint, in whole seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class ShuttingDown(ServeError):
    """The engine is draining for shutdown and accepts no new work."""

    status = 503
