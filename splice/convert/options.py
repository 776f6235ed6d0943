"""Refusing what a reader does not implement: one check, one message, for every format's options."""

from __future__ import annotations

from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


def refuse_unknown(options: Mapping[str, Any], source: Path, reader: str, known: Container[str],
                   described: Mapping[str, str] | None = None, off: tuple = ()) -> None:
    """Refuse, by name, the first option not in ``known`` unless its value is in ``off`` (the option unused).

    An option splice does not know may change what the adapter computes, so guessing is never safe.
    ``reader`` names the format and kind in the message (``"peft LORA"``); ``described`` says what a
    known-but-refused option is (``{"use_dora": "DoRA (weight-decomposed LoRA)"}``).
    """
    described = described or {}
    for key, value in options.items():
        if key in known or value in off:
            continue
        verdict = f"({described[key]}) is not implemented by splice" if key in described else "is unknown to splice"
        raise CheckpointError(
            f"{source}: {reader} option {key}={value!r} {verdict}; it may change what the adapter computes, so "
            "splice does not read it."
        )


# Values that mean an option is not in use (peft writes every field, most of them unset).
UNSET = (None, False, {}, [], "")
