"""Convert any mergeable adapter to a LoRA of a chosen rank, for servers that run only LoRA (vLLM, LoRAX).

At each site the adapter's weight change ``ΔW`` (what merging it would add: :meth:`Delta.weight_change`)
is factored by SVD and cut to ``rank``; the LoRA computes ``B @ A``, the best rank-``rank`` approximation
of ``ΔW``. How close it is, is reported per site as the relative Frobenius error
``|ΔW - B A| / |ΔW|`` (0 where the method's change already has rank ≤ ``rank``: a LoRA of its own rank, or
IA³ at full rank). A change of the bias (IA³ on a projection with a bias, BitFit) has no LoRA form and is
refused by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .adapter import Adapter
from .averaging import _head_like
from .combine import svd_factors
from .errors import AdapterError, SpliceError
from .methods.lora import LoRA

if TYPE_CHECKING:
    from .anatomy import Anatomy

# A bias change this small is float64 noise from the trial merge, not a change.
_BIAS_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LoRAApproximation:
    """The LoRA made by :func:`to_lora` (its name and adapter), its rank, and its relative Frobenius error at
    each site (by site key)."""

    name: str
    adapter: Adapter
    rank: int
    errors: dict[str, float]

    @property
    def max_error(self) -> float:
        return max(self.errors.values())

    @property
    def mean_error(self) -> float:
        return sum(self.errors.values()) / len(self.errors)

    def describe(self) -> str:
        """One line: the rank and the error, for a log or the CLI."""
        worst = max(self.errors, key=self.errors.get)
        return (f"LoRA rank {self.rank}: relative error max {self.max_error:.2e} ({worst}), "
                f"mean {self.mean_error:.2e} over {len(self.errors)} sites")


def to_lora(anatomy: Anatomy, name: str, source: Adapter, new_name: str, rank: int,
            merged: Sequence[str] = ()) -> LoRAApproximation:
    """A LoRA of ``rank`` approximating the mergeable adapter ``source`` (named ``name``; see the module), to be
    added as ``new_name`` by the caller; ``merged``: the adapters merged into the base now (refused)."""
    config = source.config
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise AdapterError(f"The LoRA rank must be a positive integer; got {rank!r}.")
    if not config.mergeable:
        raise AdapterError(f"{name!r} is a {type(config).__name__} adapter, which has no weight change to factor "
                           "(it is not mergeable); only mergeable adapters (LoRA, IA3, ...) convert to LoRA.")
    if merged:
        raise AdapterError(f"Adapters {list(merged)} are merged into the base, which would change the weight "
                           f"change measured for {name!r}; unmerge them first (model.unmerge).")
    lora = _lora_config_for(anatomy, name, source, rank)
    changes = {}
    with torch.no_grad():
        for site, delta in source.items():
            delta.check_merge(site)
            weight, bias = delta.weight_change(site)
            if bias is not None and bias.abs().max() > _BIAS_TOLERANCE:
                raise AdapterError(
                    f"{name!r} changes the bias at {site.key}, which a LoRA cannot hold ({type(config).__name__} "
                    "on a projection with a bias); keep it as it is, or convert an adapter on bias-free projections.")
            changes[site.key] = weight
    device = next((p.device for p in source.parameters()), torch.device("cpu"))
    target = Adapter(lora, anatomy, _head_like(source)).to(device)
    if source.head is not None:  # the same head, so the LoRA computes what the adapter computes end to end
        target.head.load_state_dict(source.head.state_dict())
    errors = {}
    with torch.no_grad():
        for key, weight in changes.items():
            a, b = svd_factors(weight, rank, full_matrices=False)  # same product, no unused columns
            delta = target.delta(key)
            delta.lora_A.weight.copy_(a)
            delta.lora_B.weight.copy_(b / delta.scaling)
            # measured on the factors as stored (the adapter's dtype), not on the float64 SVD
            stored = (delta.lora_B.weight.double() * delta.scaling) @ delta.lora_A.weight.double()
            norm = torch.linalg.matrix_norm(weight)
            errors[key] = float(torch.linalg.matrix_norm(weight - stored) / norm) if norm > 0 else 0.0
    return LoRAApproximation(new_name, target, rank, errors)


def _lora_config_for(anatomy: Anatomy, name: str, source: Adapter, rank: int) -> LoRA:
    """A LoRA (scaling 1) on exactly the source's sites, or a clear refusal where the roles cannot say them."""
    roles = tuple(dict.fromkeys(site.role for site in source.sites.values()))
    try:
        config = LoRA(r=rank, alpha=float(rank), targets=roles, layers=source.config.layers)
        sites = {site.key for site in config.sites(anatomy)}
    except SpliceError as error:  # a role LoRA does not take (e.g. a soft prompt's)
        raise AdapterError(f"{name!r} acts on {list(roles)}, which a LoRA cannot target: {error}") from None
    if sites != set(source.sites):
        raise AdapterError(f"A LoRA on roles {list(roles)} would adapt {sorted(sites - set(source.sites))} too, which "
                           f"{name!r} leaves alone; this adapter's sites have no LoRA config.")
    return config
