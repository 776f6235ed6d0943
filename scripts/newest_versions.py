"""Print the releases scripts/test-newest.sh is testing against, and every one that differs from the lock.

    python scripts/newest_versions.py requirements/lock.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

WATCHED = ("torch", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub", "tokenizers")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a pip-compile lock."""
    pins = (re.match(r"([A-Za-z0-9._-]+)==(\S+)", line) for line in lock.read_text().splitlines())
    return {canonical(m.group(1)): m.group(2) for m in pins if m}


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def main(argv: list[str]) -> None:
    pins, here = locked(Path(argv[0])), installed()
    print("testing the newest releases: " + ", ".join(f"{name} {here.get(name, 'missing')}" for name in WATCHED))
    moved = [f"{name} {pins[name]} -> {here.get(name, 'missing')}" for name in sorted(pins)
             if here.get(name) != pins[name]]
    print("differs from requirements/lock.txt: " + ("; ".join(moved) if moved else "nothing"))


if __name__ == "__main__":
    main(sys.argv[1:])
