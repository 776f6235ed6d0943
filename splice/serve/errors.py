"""What the server answers when it cannot do what a request asks: each error carries its HTTP status.

They subclass :class:`splice.SpliceError`, so they read like every other refusal
in splice: what was wrong and what to do instead. On the wire every refusal has
one shape, OpenAI's: ``{"error": {"message", "type", "param", "code"}}`` (:func:`error_body`),
which ``/openapi.json`` documents as :class:`ErrorResponse` for each status a route
can send (:func:`documented`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..errors import SpliceError

NAME_SHOWN = 40  # characters of a client's name echoed in a message: enough to recognise it, never a megabyte

# The ``type`` of an error by its status, in the spirit of OpenAI's (clients switch on the status; people read this).
ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "server_error",
    503: "unavailable_error",
    504: "timeout_error",
}

DESCRIPTIONS = {
    400: "The request is invalid (malformed JSON, a field of the wrong type, an empty input, ...)",
    404: "No adapter or alias of that name is served",
    409: "The name is taken, or still in use by an alias",
    413: "The request body is too large",
    429: "The request queue is full; retry after the Retry-After header's seconds",
    500: "The model failed while running the request",
    503: "The server is shutting down",
    504: "The request did not finish in time",
}


class ServeError(SpliceError):
    """A request the server refuses; ``status`` is the HTTP status the app answers with.

    ``param`` names the request field at fault, when one is; ``code`` is a short
    machine-readable reason (OpenAI's ``code``), when a client may want to branch on it.
    """

    status = 400
    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class BadRequest(ServeError):
    """The request is well-formed JSON but asks for something invalid (empty input, too long, ...)."""


class NotFound(ServeError):
    """No adapter or alias of that name is being served."""

    status = 404
    code = "model_not_found"


class Conflict(ServeError):
    """The name is already taken (by an adapter or an alias)."""

    status = 409


class PayloadTooLarge(ServeError):
    """The request body is larger than the server takes (``Limits.max_body_bytes``); it was not read."""

    status = 413


class Overloaded(ServeError):
    """The request queue is full; ``retry_after`` is a hint, in whole seconds."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class ShuttingDown(ServeError):
    """The engine is draining for shutdown and accepts no new work."""

    status = 503
    code = "shutting_down"


class TimedOut(ServeError):
    """The request was accepted but not answered within the server's time limit."""

    status = 504


class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong and what to do instead")
    type: str = Field(description="the kind of error, from the status: " + ", ".join(sorted(set(ERROR_TYPES.values()))))
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a short machine-readable reason, if there is one")


class ErrorResponse(BaseModel):
    """Every refusal's body (OpenAI's error shape)."""

    error: ErrorDetail


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body of a refusal with HTTP ``status``."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def refusal(error: BaseException) -> tuple[int, dict]:
    """The status and body answering ``error``, in a response or mid-stream.

    A :class:`ServeError` has its own status; another :class:`SpliceError` (bad adapter
    files, ...) is the request's fault, 400; a ``RuntimeError`` is the engine's report of a
    failed batch (it logged the traceback), 500 with its message; anything else is a bug,
    500 with no detail (the traceback goes to the server's log).
    """
    if isinstance(error, ServeError):
        return error.status, error_body(error.status, str(error), error.param, error.code)
    if isinstance(error, SpliceError):
        return 400, error_body(400, str(error))
    message = str(error) if isinstance(error, RuntimeError) else "Internal server error; the server's log has details."
    return 500, error_body(500, message)


def documented(*statuses: int) -> dict[int | str, dict]:
    """A route's ``responses=``: each of ``statuses`` answered with :class:`ErrorResponse` (429 with its header)."""
    responses: dict[int | str, dict] = {status: {"model": ErrorResponse, "description": DESCRIPTIONS[status]}
                                        for status in statuses}
    if 429 in responses:
        responses[429]["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                     "schema": {"type": "integer"}}}
    return responses


def shown(name: str) -> str:
    """``name`` quoted for a message, cut to its first :data:`NAME_SHOWN` characters if longer."""
    if len(name) <= NAME_SHOWN:
        return repr(name)
    return f"{name[:NAME_SHOWN]!r}... ({len(name)} characters)"
