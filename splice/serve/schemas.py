"""Request bodies of the HTTP API (pydantic models, so FastAPI documents them at ``/docs``).

Types are strict: a number where text is expected is refused, not converted.
Fields OpenAI clients send that splice does not implement are refused when they
ask for something (``n=2``, ``logprobs``, penalties), never silently ignored.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .errors import BadRequest

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
    encoding_format: Literal["float"] = "float"


class _Sampling(_Body):
    model: StrictStr = Field("", description="adapter name or alias; \"\" or \"base\" for the base model")
    max_tokens: StrictInt = Field(16, description="tokens to generate at most")
    temperature: Number = Field(1.0, description="0 decodes greedily")
    top_p: Number = 1.0
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    user: StrictStr | None = Field(None, description="a stable id: the same user always gets the same "
                                                           "side of an alias's split")
    n: StrictInt = 1
    logprobs: StrictBool | StrictInt | None = None
    presence_penalty: Number = 0.0
    frequency_penalty: Number = 0.0

    def refusals(self) -> list[str]:
        """What this request asks for that splice does not implement."""
        wrong = []
        if self.n != 1:
            wrong.append("n other than 1")
        if self.logprobs not in (None, False, 0):
            wrong.append("logprobs")
        if self.presence_penalty or self.frequency_penalty:
            wrong.append("presence/frequency penalties")
        return wrong

    def check(self, max_new_tokens: int) -> None:
        """Refuse, naming the field, what splice does not implement and settings sampling cannot run with."""
        refused = self.refusals()
        if refused:
            raise BadRequest(f"splice serve does not implement {', '.join(refused)}.")
        if not 1 <= self.max_tokens <= max_new_tokens:
            raise BadRequest(f"max_tokens must be between 1 and {max_new_tokens}, got {self.max_tokens}.")
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


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr


class ChatRequest(_Sampling):
    messages: list[ChatMessage]


class LoadRequest(_Body):
    source: StrictStr = Field(description="an adapter folder on the server, or a registry name@version")
    name: StrictStr | None = Field(None, description="serve it under this name (default: its saved name, "
                                                           "or the registry reference)")
    pin: StrictBool = Field(False, description="keep it on the model, never evicted")


class AliasRequest(_Body):
    targets: dict[StrictStr, Number] = Field(description="adapter name -> weight, e.g. "
                                                         "{\"sentiment@2\": 0.9, \"sentiment@3\": 0.1}")
