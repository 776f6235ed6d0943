"""LoRA (Hu et al. 2021): a low-rank update ``B @ A`` beside a frozen projection.

``y + (alpha / r) * B(A(dropout(x)))``; ``B`` starts at zero so a fresh adapter
is the identity. Mergeable: ``W += (alpha / r) * B @ A`` and back.

``rank_pattern`` / ``alpha_pattern`` give some sites their own rank or alpha
(peft's options of the same names), keyed by role (``"q"``) or by site key
(``"layers.3.q"``, as in checkpoint tensor names); a site key wins over its role.

``init`` picks the starting ``A``, ``B``: ``"kaiming"`` / ``"gaussian"`` (``B = 0``),
or ``"pissa"`` / ``"olora"``, which start from the principal part of the base weight
(:mod:`.principal`). peft subtracts that part from the base weight; splice never
writes the base, so such a delta keeps the starting pair as fixed buffers
(``fixed_A``, ``fixed_B``) and subtracts their product itself:
``y + s·B·A·x - s·B₀·A₀·x``, the identity at the start, the same output as peft's after.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from ..errors import AdapterError, AnatomyError, ConfigError
from ..kernels import RowSlots
from . import principal
from .base import Delta, MethodConfig, Recipe, add_to_rows, expand_targets, normalise_targets
from .registry import register

_SITE_KEY = re.compile(r"^(?P<stack>\w+)\.(?P<layer>\d+)\.(?P<role>\w+)$")

Pattern = tuple[tuple[str, Any], ...]


@register
@dataclass(frozen=True, kw_only=True)
class LoRA(MethodConfig):
    """Low-rank adaptation of the projections named by ``targets`` (roles, or ``"all-linear"``).

    ``use_rslora`` scales by ``alpha / sqrt(r)`` (Kalajdzievski 2023) instead of ``alpha / r``.
    ``rank_pattern`` / ``alpha_pattern`` (``{"v": 16, "layers.0.q": 4}``) override ``r`` /
    ``alpha`` at some sites; they are stored as sorted ``(key, value)`` pairs so configs stay
    hashable, and written to JSON as objects.

    Exact averages (``model.average``) stack the adapters' ranks: ``B = [w_1 s_1 B_1 | w_2 s_2 B_2]``,
    ``A = [A_1; A_2]``, so they compute what ``Average(...)`` computes.
    """

    method: ClassVar[str] = "lora"
    mergeable: ClassVar[bool] = True
    averages_exactly: ClassVar[bool] = True
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "lora": Recipe({"r": 8, "alpha": 16.0, "targets": ("q", "v"), "dropout": 0.1}, 5e-4,
                       help="low-rank updates of q and v (Hu et al. 2021)"),
    }

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q", "v")
    use_rslora: bool = False
    init: str = "kaiming"
    rank_pattern: Pattern | Mapping[str, int] = ()
    alpha_pattern: Pattern | Mapping[str, float] = ()

    def validate(self) -> None:
        if not _is_rank(self.r):
            raise ConfigError(f"LoRA.r must be a positive integer, got {self.r!r}.")
        self._require_positive("alpha", self.alpha)
        self._require_fraction("dropout", self.dropout)
        principal.check_init(self, self.init)
        normalise_targets(self, "targets", PROJECTION_ROLES)
        self._normalise_pattern("rank_pattern", _is_rank, "a positive integer rank")
        self._normalise_pattern("alpha_pattern", _is_positive, "a positive number")

    def _normalise_pattern(self, field: str, valid, what: str) -> None:
        value = getattr(self, field)
        pairs = value.items() if isinstance(value, Mapping) else value
        try:
            pairs = tuple(sorted((key, number) for key, number in pairs))
        except (TypeError, ValueError):
            raise ConfigError(
                f"LoRA.{field} must map roles or site keys to values, e.g. {{'v': 16, 'layers.0.q': 4}}; "
                f"got {value!r}."
            ) from None
        targeted = PROJECTION_ROLES if self.targets == ("all-linear",) else self.targets
        for key, number in pairs:
            match = _SITE_KEY.match(key) if isinstance(key, str) else None
            role = match["role"] if match else key
            if role not in targeted:
                raise ConfigError(
                    f"LoRA.{field} key {key!r} must be a targeted role ({', '.join(targeted)}) or a site key "
                    "such as 'layers.3.q' naming one."
                )
            if not valid(number):
                raise ConfigError(f"LoRA.{field}[{key!r}] must be {what}, got {number!r}.")
        object.__setattr__(self, field, pairs)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["rank_pattern"] = dict(self.rank_pattern)
        data["alpha_pattern"] = dict(self.alpha_pattern)
        return data

    def rank_at(self, site: Site) -> int:
        """The rank of this LoRA at ``site``: ``rank_pattern`` for its key or role, else ``r``."""
        return _lookup(self.rank_pattern, site, self.r)

    def alpha_at(self, site: Site) -> float:
        """The alpha of this LoRA at ``site``: ``alpha_pattern`` for its key or role, else ``alpha``."""
        return _lookup(self.alpha_pattern, site, self.alpha)

    def scaling_at(self, site: Site) -> float:
        """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA) with this site's own rank and alpha."""
        r = self.rank_at(site)
        return self.alpha_at(site) / (math.sqrt(r) if self.use_rslora else r)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        sites = self.sites_for(anatomy, expand_targets(self.targets, anatomy))
        keys = {site.key for site in sites}
        for field in ("rank_pattern", "alpha_pattern"):
            stray = [key for key, _ in getattr(self, field) if _SITE_KEY.match(key) and key not in keys]
            if stray:
                raise AnatomyError(
                    f"LoRA.{field} names site(s) {stray} that this LoRA does not adapt in this model; "
                    f"its sites are {', '.join(sorted(keys))}."
                )
        return sites

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return LoRADelta(site.in_features, site.out_features, self.rank_at(site), self.scaling_at(site), self,
                         site)

    def plain(self) -> LoRA:
        """The plain LoRA computing what this one computes from :meth:`LoRADelta.factors`: itself, or for a
        PiSSA / OLoRA start, twice the ranks (``[A; A₀]``, ``[B, -B₀]``) at the same scalings, as peft writes
        such an adapter after its conversion (``path_initial_model_for_weight_conversion``)."""
        if not principal.is_principal(self.init):
            return self
        grow = 2 ** 0.5 if self.use_rslora else 2  # alpha / r (or / sqrt r) unchanged at twice the rank
        return dataclasses.replace(
            self, init="kaiming", r=2 * self.r, alpha=grow * self.alpha,
            rank_pattern={key: 2 * r for key, r in self.rank_pattern},
            alpha_pattern={key: grow * alpha for key, alpha in self.alpha_pattern})

    def averaged(self, configs: Sequence[MethodConfig]) -> LoRA:
        """One LoRA with the ranks of ``configs`` stacked, and scaling 1 (their scalings go into ``B``)."""
        if any(principal.is_principal(c.init) for c in configs):
            raise AdapterError("Exact LoRA averaging stacks trained pairs; a PiSSA / OLoRA start also holds a fixed "
                               "pair. Average with mode='parameters', or save it (format='peft') as a plain LoRA.")
        shapes = [dataclasses.replace(c, r=1, alpha=1.0, rank_pattern=(), alpha_pattern=()) for c in configs]
        if any(c != shapes[0] for c in shapes) or any(c.rank_pattern or c.alpha_pattern for c in configs):
            raise AdapterError("Exact LoRA averaging needs the same targets, layers and options (ranks may differ; "
                               "rank/alpha patterns are not supported).")
        rank = sum(c.r for c in configs)
        # alpha = r (or sqrt(r) with rsLoRA) makes the new scaling 1.
        return dataclasses.replace(self, r=rank, alpha=float(rank ** 0.5) if self.use_rslora else float(rank))


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _lookup(pattern: Pattern, site: Site, default):
    """The value ``pattern`` gives ``site`` (its site key first, then its role), else ``default``."""
    values = dict(pattern)
    return values.get(site.key, values.get(site.role, default))


class LoRADelta(Delta):
    """The pair ``lora_A`` (``[r, in]``) and ``lora_B`` (``[out, r]``) at one projection (and, for a PiSSA /
    OLoRA start, the fixed pair ``fixed_A``, ``fixed_B`` that the hooks subtract)."""

    stage = "output"
    reads_input = True
    banked = True

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, config: LoRA,
                 site: Site | None = None):
        super().__init__()
        self.scaling = scaling
        self.dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.fixed = principal.is_principal(config.init)
        # A bank runs one dropout over both halves of [A; A₀], but the fixed half must see x without it.
        if self.fixed and config.dropout > 0:
            self.banked = False
        if self.fixed:
            self.register_buffer("fixed_A", torch.empty_like(self.lora_A.weight))
            self.register_buffer("fixed_B", torch.empty_like(self.lora_B.weight))
            principal.start(self, config.init, site)
        else:
            if config.init == "gaussian":
                nn.init.normal_(self.lora_A.weight, std=1 / r)
            else:
                nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            return self._forward_from_start(x, y)
        h = self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype)))
        if y.dtype != h.dtype:
            return y + (self.lora_B(h) * self.scaling).to(y.dtype)
        # Scale and add inside the second matmul (its epilogue): no extra passes over the output.
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.weight.t(),
                          alpha=self.scaling)
        return out.view(y.shape)

    def _forward_from_start(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + s·(B·A·dropout(x) - B₀·A₀·x)``, the difference taken first so that it is exactly 0 at the start
        (peft's residual base weight sees ``x`` without dropout, so the fixed pair does too)."""
        x = x.to(self.lora_A.weight.dtype)
        trained = self.lora_B(self.lora_A(self.dropout(x)))
        start = nn.functional.linear(nn.functional.linear(x, self.fixed_A), self.fixed_B)
        return y + ((trained - start) * self.scaling).to(y.dtype)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of the plain LoRA this delta computes at its scaling: its own pair, or for a PiSSA / OLoRA
        start ``[A; A₀]`` and ``[B, -B₀]`` (twice the rank; see :meth:`LoRA.plain`)."""
        if not self.fixed:
            return self.lora_A.weight, self.lora_B.weight
        return (torch.cat([self.lora_A.weight, self.fixed_A]), torch.cat([self.lora_B.weight, -self.fixed_B], 1))

    @staticmethod
    def route_key(delta: "LoRADelta") -> tuple:
        return (delta.dropout.p,)

    @staticmethod
    def bank_sources(delta: "LoRADelta") -> dict[str, torch.Tensor | float]:
        a, b = delta.factors()
        return {"a": a, "b": b, "scale": delta.scaling}

    @staticmethod
    def routed(first: "LoRADelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row LoRA: each row adds its slot's update (slot -1: none)."""
        return kernels.lora(first.dropout(x), y, table["a"], table["b"], table["scale"], rows)

    def delta_weight(self) -> torch.Tensor:
        """The ``[out, in]`` update this delta adds to the base weight."""
        a, b = self.factors()
        return (b.float() @ a.float()) * self.scaling

    def merge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, self.delta_weight())

    def unmerge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, -self.delta_weight())

    def average_of(self, parts: Sequence[LoRADelta], weights: Sequence[float]) -> None:
        """The parts' ranks stacked, each part's weight and scaling folded into its columns of ``B``."""
        with torch.no_grad():
            self.lora_A.weight.copy_(torch.cat([p.lora_A.weight for p in parts], 0))
            self.lora_B.weight.copy_(torch.cat([w * p.scaling * p.lora_B.weight for w, p in zip(weights, parts)], 1))
