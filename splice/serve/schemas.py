"""Request bodies of the HTTP API (pydantic models, so FastAPI documents them at ``/docs``).

Types are strict: a number where text is expected is refused, not converted. An
integer field takes what JSON Schema calls an integer, ``1.0`` included: the
schema at ``/openapi.json`` says ``integer``, and a client that computed the number as a float sends ``1.0``.
Fields OpenAI clients send that splice does not implement are refused (HTTP 400,
naming the field) when they ask for something (penalties, ``logit_bias``,
``tools``, ``response_format`` other than text, ``best_of``...), never silently
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
MAX_N = 8  # completions per prompt
MAX_TOP_LOGPROBS = 5  # alternatives per token, completions (OpenAI's limit)
MAX_CHAT_TOP_LOGPROBS = 20  # alternatives per token, chat (OpenAI's limit)


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
    n: Integer = Field(1, description=f"completions per prompt (1-{MAX_N}), sharing the prompt's prefill")
    seed: Integer | None = Field(None, description="choice c samples from a generator seeded with seed + c: the same "
                                                   "request gives the same answer, whatever runs beside it")
    # asked for by OpenAI clients, not implemented: refused unless left at what means "not asked"
    presence_penalty: Number = Field(0.0, description="not supported beyond 0")
    frequency_penalty: Number = Field(0.0, description="not supported beyond 0")
    logit_bias: dict[StrictStr, Number] | None = Field(None, description="not supported")

    def refusals(self) -> list[str]:
        """The fields of this request asking for what splice does not implement."""
        wrong = []
        if self.presence_penalty or self.frequency_penalty:
            wrong.append("presence_penalty/frequency_penalty other than 0")
        if self.logit_bias:
            wrong.append("logit_bias")
        if self.stream_options is not None and not self.stream:
            wrong.append("stream_options without stream")
        return wrong

    @property
    def new_tokens(self) -> int:
        """Tokens to generate at most: ``max_completion_tokens``, else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def top_logprobs_wanted(self) -> int | None:
        """Alternatives to report per token, or None: no log-probabilities asked for."""
        return None

    @property
    def echo_prompt(self) -> bool:
        return False

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
        least = 0 if self.echo_prompt else 1
        if not least <= self.new_tokens <= max_new_tokens:
            hint = " (0 only with echo)" if least else ""
            raise BadRequest(f"{field} must be between {least} and {max_new_tokens}{hint}, got {self.new_tokens}.")
        if not 1 <= self.n <= MAX_N:
            raise BadRequest(f"n must be between 1 and {MAX_N}, got {self.n}.", param="n")
        if self.seed is not None and not 0 <= self.seed < 2**63 - MAX_N * 64:
            raise BadRequest(f"seed must be between 0 and 2**63 - {MAX_N * 64}, got {self.seed}.", param="seed")
        self.check_logprobs()
        _check_sampling("temperature", self.temperature, 0 <= self.temperature <= 100, "in [0, 100] (0: greedy)")
        _check_sampling("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")

    def check_logprobs(self) -> None:
        """Refuse log-probability settings out of range (each endpoint names its own fields)."""

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
    echo: StrictBool = Field(False, description="the prompt leads the text, and its tokens the logprobs (the first "
                                                "with none); with max_tokens 0, the prompt's log-likelihood alone")
    logprobs: Integer | None = Field(None, description=f"log-probabilities of the tokens and of the 0-"
                                                       f"{MAX_TOP_LOGPROBS} most likely alternatives at each")
    best_of: Integer | None = Field(None, description="not supported beyond 1")
    suffix: StrictStr | None = Field(None, description="not supported")

    def refusals(self) -> list[str]:
        wrong = super().refusals()
        if self.best_of not in (None, 1):
            wrong.append("best_of other than 1")
        if self.suffix:
            wrong.append("suffix")
        return wrong

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @property
    def echo_prompt(self) -> bool:
        return self.echo

    def check_logprobs(self) -> None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}.",
                             param="logprobs")


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
    logprobs: StrictBool = Field(False, description="log-probabilities of the message's tokens")
    top_logprobs: Integer | None = Field(None, description=f"with logprobs: the 0-{MAX_CHAT_TOP_LOGPROBS} most "
                                                           "likely alternatives at each token")

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
        return wrong

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_logprobs(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_CHAT_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be between 0 and {MAX_CHAT_TOP_LOGPROBS}, got {self.top_logprobs}.",
                             param="top_logprobs")


class LoadRequest(_Body):
    source: StrictStr = Field(description="an adapter folder on the server, or a registry name@version")
    name: StrictStr | None = Field(None, description="serve it under this name (default: its saved name, "
                                                           "or the registry reference)")
    pin: StrictBool = Field(False, description="keep it on the model, never evicted")


class AliasRequest(_Body):
    targets: dict[StrictStr, Number] = Field(description="adapter name -> weight, e.g. "
                                                         "{\"sentiment@2\": 0.9, \"sentiment@3\": 0.1}")
