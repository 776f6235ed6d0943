"""Request bodies of the HTTP API (pydantic models, so FastAPI documents them at ``/docs``).

Types are strict: a number where text is expected is refused, not converted. An
integer field takes what JSON Schema calls an integer, ``1.0`` included: the
schema at ``/openapi.json`` says ``integer``, and a client that computed the number as a float sends ``1.0``.
Fields OpenAI clients send that splice does not implement are refused (HTTP 400,
naming the field) when they ask for something (``n=2``, ``logprobs``, penalties,
``tools``, ``response_format`` other than text, ``echo``...), never silently
ignored. Fields not declared here are ignored: clients send extras that only label
a request (``metadata``, ``store``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .errors import BadRequest


def _whole(value: object) -> object:
    """A float with no fractional part as the int it is (``1.0`` -> ``1``); anything else unchanged, for the
    strict check after it (``1.5`` and ``"1"`` stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_whole)]
Number = StrictInt | StrictFloat
Texts = StrictStr | list[StrictStr]
# Sampling runs in float32: a smaller non-zero number is subnormal or rounds to 0 there (top_p=1e-46 became a
# top_p of 0, which left a row nothing to sample and failed its whole batch with NaN probabilities).
FLOAT32_TINY = 1.1754943508222875e-38


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ClassifyRequest(_Body):
    adapter: StrictStr = Field(description="adapter name or alias whose head classifies the inputs")
    inputs: Texts = Field(description="one text or a list of texts")


class EmbeddingsRequest(_Body):
    model: StrictStr = Field("", description="adapter name or alias; \"\" for the base model")
    input: Texts
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes, base64-encoded (the openai "
                             "client's default)")
    dimensions: Integer | None = Field(None, description="not supported: vectors have the model's hidden size")

    def check(self) -> None:
        if self.dimensions is not None:
            raise BadRequest("splice serve does not implement dimensions: vectors have the model's hidden size; "
                             "leave the field out.")


class StreamOptions(_Body):
    include_usage: StrictBool = Field(False, description="end the stream with a chunk holding the usage")


class _Sampling(_Body):
    model: StrictStr = Field("", description="adapter name or alias; \"\" or \"base\" for the base model")
    max_tokens: Integer = Field(16, description="tokens to generate at most")
    max_completion_tokens: Integer | None = Field(None, description="the newer name of max_tokens")
    temperature: Number = Field(1.0, description="0 decodes greedily")
    top_p: Number = 1.0
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = Field(None, description="only with stream")
    user: StrictStr | None = Field(None, description="a stable id: the same user always gets the same "
                                                           "side of an alias's split")
    # asked for by OpenAI clients, not implemented: refused unless left at what means "not asked"
    n: Integer = Field(1, description="not supported beyond 1")
    logprobs: StrictBool | Integer | None = Field(None, description="not supported")
    presence_penalty: Number = Field(0.0, description="not supported beyond 0")
    frequency_penalty: Number = Field(0.0, description="not supported beyond 0")
    logit_bias: dict[StrictStr, Number] | None = Field(None, description="not supported")
    seed: Integer | None = Field(None, description="not supported")

    def refusals(self) -> list[str]:
        """The fields of this request asking for what splice does not implement."""
        wrong = []
        if self.n != 1:
            wrong.append("n other than 1")
        if self.logprobs not in (None, False, 0):
            wrong.append("logprobs")
        if self.presence_penalty or self.frequency_penalty:
            wrong.append("presence_penalty/frequency_penalty other than 0")
        if self.logit_bias:
            wrong.append("logit_bias")
        if self.seed is not None:
            wrong.append("seed")
        if self.stream_options is not None and not self.stream:
            wrong.append("stream_options without stream")
        return wrong

    @property
    def new_tokens(self) -> int:
        """Tokens to generate at most: ``max_completion_tokens``, else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check(self, max_new_tokens: int) -> None:
        """Refuse, naming the field, what splice does not implement and settings sampling cannot run with."""
        refused = self.refusals()
        if refused:
            raise BadRequest(f"splice serve does not implement {', '.join(refused)}: leave these fields out.")
        field = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        if field == "max_completion_tokens" and "max_tokens" in self.model_fields_set \
                and self.max_tokens != self.max_completion_tokens:
            raise BadRequest(f"max_tokens ({self.max_tokens}) and max_completion_tokens ({self.new_tokens}) "
                             "differ; send one of them.")
        if not 1 <= self.new_tokens <= max_new_tokens:
            raise BadRequest(f"{field} must be between 1 and {max_new_tokens}, got {self.new_tokens}.")
        _check_sampling("temperature", self.temperature, 0 <= self.temperature <= 100, "in [0, 100] (0: greedy)")
        _check_sampling("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def _check_sampling(field: str, value: float, in_range: bool, allowed: str) -> None:
    if not math.isfinite(value) or not in_range:
        raise BadRequest(f"{field} must be a finite number {allowed}, got {value!r}.")
    if 0 < abs(value) < FLOAT32_TINY:
        raise BadRequest(f"{field}={value!r} is too small to sample with (the smallest non-zero value is "
                         f"{FLOAT32_TINY:.2g}); for greedy decoding send temperature 0.")


class CompletionRequest(_Sampling):
    prompt: Texts
    echo: StrictBool = Field(False, description="not supported")
    best_of: Integer | None = Field(None, description="not supported beyond 1")
    suffix: StrictStr | None = Field(None, description="not supported")

    def refusals(self) -> list[str]:
        wrong = super().refusals()
        if self.echo:
            wrong.append("echo")
        if self.best_of not in (None, 1):
            wrong.append("best_of other than 1")
        if self.suffix:
            wrong.append("suffix")
        return wrong


class TextPart(_Body):
    """One part of a message's content; only text parts are supported."""

    type: StrictStr = Field(description="\"text\"")
    text: StrictStr | None = None


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[TextPart] = Field(description="text, or a list of text parts "
                                                           "(joined with newlines)")

    def text(self, index: int) -> str:
        """The content as one text; a part that is not text is refused, naming it."""
        if isinstance(self.content, str):
            return self.content
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise BadRequest(f"messages[{index}].content[{j}] is a {part.type!r} part; splice serve takes "
                                 "text parts only: {\"type\": \"text\", \"text\": \"...\"}.")
        return "\n".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    response_format: dict[str, Any] | None = Field(None, description="only {\"type\": \"text\"}")
    tools: list[dict[str, Any]] | None = Field(None, description="not supported")
    tool_choice: StrictStr | dict[str, Any] | None = Field(None, description="only \"none\"")
    functions: list[dict[str, Any]] | None = Field(None, description="not supported")
    function_call: StrictStr | dict[str, Any] | None = Field(None, description="only \"none\"")
    top_logprobs: Integer | None = Field(None, description="not supported")

    def refusals(self) -> list[str]:
        wrong = super().refusals()
        if self.response_format not in (None, {"type": "text"}):
            wrong.append('response_format other than {"type": "text"}')
        if self.tools:
            wrong.append("tools")
        if self.tool_choice not in (None, "none"):
            wrong.append('tool_choice other than "none"')
        if self.functions:
            wrong.append("functions")
        if self.function_call not in (None, "none"):
            wrong.append('function_call other than "none"')
        if self.top_logprobs:
            wrong.append("top_logprobs")
        return wrong


class LoadRequest(_Body):
    source: StrictStr = Field(description="an adapter folder on the server, or a registry name@version")
    name: StrictStr | None = Field(None, description="serve it under this name (default: its saved name, "
                                                           "or the registry reference)")
    pin: StrictBool = Field(False, description="keep it on the model, never evicted")


class AliasRequest(_Body):
    targets: dict[StrictStr, Number] = Field(description="adapter name -> weight, e.g. "
                                                         "{\"sentiment@2\": 0.9, \"sentiment@3\": 0.1}")
