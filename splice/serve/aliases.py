"""Aliases: a stable name clients call, pointing at one adapter or a weighted split of several (A/B tests).

``PUT /v1/aliases/sentiment {"targets": {"sentiment@2": 0.9, "sentiment@3": 0.1}}``
sends 90 % of requests for ``sentiment`` to version 2. The pick is a hash of the
alias and the request id, so one request id always lands on the same target
(a user stays in their arm of the test); requests without an id are spread at
random. Repointing swaps one immutable entry under a lock, so every request
sees either the old split or the new one, never a mixture: rolling back is one PUT.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import BadRequest, NotFound, shown


@dataclass(frozen=True)
class Alias:
    """An alias's targets (adapter names) and their cumulative weights, normalised to end at 1."""

    name: str
    targets: tuple[str, ...]
    weights: tuple[float, ...]
    created: int = field(default_factory=lambda: int(time.time()), compare=False)  # when this split was set

    @property
    def split(self) -> dict[str, float]:
        """Target -> share of traffic (the weights as given, normalised to sum to 1)."""
        return dict(zip(self.targets, self.weights))

    def pick(self, request_id: str | None) -> str:
        """The target for a request: deterministic for a given ``request_id``, random without one."""
        if len(self.targets) == 1:
            return self.targets[0]
        if request_id is None:
            point = random.random()
        else:
            digest = hashlib.sha256(f"{self.name}\0{request_id}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2.0**64
        total = 0.0
        for target, weight in zip(self.targets, self.weights):
            total += weight
            if point < total:
                return target
        return self.targets[-1]  # rounding left the last sliver uncovered


def make_alias(name: str, targets: Mapping[str, float]) -> Alias:
    """Check and normalise a split: at least one target, every weight a finite number >= 0, some weight > 0."""
    if not isinstance(targets, Mapping) or not targets:
        raise BadRequest(f"Alias {name!r} needs targets: an object of adapter name -> weight, "
                         'e.g. {"sentiment@2": 0.9, "sentiment@3": 0.1}.')
    for target, weight in targets.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise BadRequest(f"Alias {name!r}: the weight of {target!r} must be a finite number >= 0, got {weight!r}.")
    total = float(sum(targets.values()))
    if total <= 0:
        raise BadRequest(f"Alias {name!r}: the weights sum to 0; give at least one target a positive weight.")
    kept = [(t, w / total) for t, w in targets.items() if w > 0]
    return Alias(name, tuple(t for t, _ in kept), tuple(w for _, w in kept))


class AliasTable:
    """Every alias, by name. Reads take no lock (one dict lookup of an immutable entry); writes take one."""

    def __init__(self) -> None:
        self._aliases: dict[str, Alias] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._aliases

    def get(self, name: str) -> Alias:
        alias = self._aliases.get(name)
        if alias is None:
            raise NotFound(f"No alias named {shown(name)}; create it with PUT /v1/aliases/<name>.")
        return alias

    def set(self, alias: Alias) -> Alias | None:
        """Point ``alias.name`` at its targets (replacing any older split atomically); returns the old entry."""
        with self._lock:
            old = self._aliases.get(alias.name)
            self._aliases[alias.name] = alias
            return old

    def remove(self, name: str) -> Alias:
        with self._lock:
            if name not in self._aliases:
                raise NotFound(f"No alias named {shown(name)}.")
            return self._aliases.pop(name)

    def pointing_at(self, target: str) -> list[str]:
        """Aliases with ``target`` among their targets."""
        return sorted(a.name for a in list(self._aliases.values()) if target in a.targets)

    def all(self) -> list[Alias]:
        return sorted(self._aliases.values(), key=lambda a: a.name)
