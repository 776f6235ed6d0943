"""Request bodies of the HTTP API (pydantic models, so FastAPI documents them at ``/docs``).

Types are strict: a number where text is expected is refused, not converted. An
integer field takes what JSON Schema calls an integer, ``1.0`` included: the
schema at ``/openapi.json`` says ``integer``, and a client that computed the number as a float sends ``1.0``.
Fields OpenAI clients send that splice does not implement are refused when they
ask for something (``n=2``, ``logprobs``, penalties), never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


def _whole(value: object) -> object:
    """A float with no fractional part as the int it is (``1.0`` -> ``1``); anything else unchanged, for the
    strict check after it (``1.5`` and ``"1"`` stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_whole)]
Number = StrictInt | StrictFloat
Texts = StrictStr | list[StrictStr]


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
    max_tokens: Integer = Field(16, description="tokens to generate at most")
    temperature: Number = Field(1.0, description="0 decodes greedily")
    top_p: Number = 1.0
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    user: StrictStr | None = Field(None, description="a stable id: the same user always gets the same "
                                                           "side of an alias's split")
    n: Integer = 1
    logprobs: StrictBool | Integer | None = None
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

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


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
