"""peft's ways of combining LoRA adapters (``add_weighted_adapter``), as functions over tensors.

One LoRA at one site is its factors ``A`` (``[r, in]``), ``B`` (``[out, r]``) and its scaling; a
combination turns several of those into one pair ``(A, B)`` whose scaling is 1. The semantics are
peft 0.22's, so that a combination made here and one made by peft compute the same thing:

- the weights are used as given, never normalised (``[1.0, 0.5]`` adds half of the second adapter);
- ``cat`` stacks the ranks (exact: the rank is the sum);
- ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` combine the ``A`` factors among
  themselves and the ``B`` factors among themselves, each side weighted by ``sqrt(|weight * scaling|)``
  (the sign on the ``A`` side), so all adapters must have the same rank at a site;
- the ``*_svd`` modes (and ``svd``) combine the full updates ``scaling * B @ A`` and factor the result
  by SVD to ``svd_rank``.

Pruning keeps a fraction ``density`` of each tensor's entries: the largest ones (TIES, magnitude
pruning) or random ones rescaled by ``1 / density`` (DARE). TIES then elects a sign per entry
(``majority_sign_method``: the sign of the sum, ``"total"``, or the more frequent sign, ``"frequency"``)
and averages the entries that agree with it. DARE draws from ``generator`` in the order peft does
(every adapter's ``A``, then every ``B``; or every full update), so a seeded generator reproduces
peft run after ``torch.manual_seed`` with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import AdapterError

SVD_MODES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
FACTOR_MODES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")  # A and B combined side by side
MODES = ("cat", *FACTOR_MODES, *SVD_MODES)
SIGN_METHODS = ("total", "frequency")
SVD_DRIVERS = ("gesvd", "gesvdj", "gesvda")  # torch.linalg.svd's CUDA drivers


@dataclass(frozen=True)
class LoRAFactors:
    """One LoRA at one site: ``update = scaling * B @ A``."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    def update(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scaling


@dataclass(frozen=True)
class CombineOptions:
    """The options of a combination; each mode takes only the ones that mean something to it.

    ``density``: the fraction of entries pruning keeps, in (0, 1] (modes with ties, dare or magnitude_prune);
    ``majority_sign_method``: ``"total"`` or ``"frequency"`` (modes with ties);
    ``svd_rank`` (default: the largest rank among the adapters), ``svd_clamp`` (a quantile in (0, 1] the
    factors' entries are clamped to), ``svd_full_matrices``, ``svd_driver`` (CUDA only): the ``*svd`` modes;
    ``seed``: the random draws of the dare modes (None: torch's global generator, as peft).
    """

    density: float | None = None
    majority_sign_method: str = "total"
    svd_rank: int | None = None
    svd_clamp: float | None = None
    svd_full_matrices: bool = True
    svd_driver: str | None = None
    seed: int | None = None

    def check(self, mode: str) -> None:
        """Raise AdapterError naming the bad option, or an option ``mode`` does not take."""
        if mode not in MODES:
            raise AdapterError(f"Combination mode must be one of {', '.join(MODES)}; got {mode!r}.")
        pruned, svd = "ties" in mode or "dare" in mode or "magnitude_prune" in mode, mode in SVD_MODES
        used = {"density": pruned, "majority_sign_method": "ties" in mode, "seed": "dare" in mode,
                "svd_rank": svd, "svd_clamp": svd, "svd_full_matrices": svd, "svd_driver": svd}
        stray = [option for option, applies in used.items()
                 if not applies and getattr(self, option) != getattr(CombineOptions, option)]
        if stray:
            raise AdapterError(f"Mode {mode!r} takes no {', '.join(stray)}; leave those options out.")
        if pruned and not (_is_number(self.density) and 0 < self.density <= 1):
            raise AdapterError(f"Mode {mode!r} needs density=, the fraction of entries kept, in (0, 1]; "
                               f"got {self.density!r}.")
        if self.majority_sign_method not in SIGN_METHODS:
            raise AdapterError("majority_sign_method must be 'total' or 'frequency'; "
                               f"got {self.majority_sign_method!r}.")
        if self.svd_rank is not None and not (_is_integer(self.svd_rank) and self.svd_rank > 0):
            raise AdapterError(f"svd_rank must be a positive integer; got {self.svd_rank!r}.")
        if self.svd_clamp is not None and not (_is_number(self.svd_clamp) and 0 < self.svd_clamp <= 1):
            raise AdapterError(f"svd_clamp is a quantile in (0, 1]; got {self.svd_clamp!r}.")
        if self.svd_driver is not None and self.svd_driver not in SVD_DRIVERS:
            raise AdapterError(f"svd_driver must be one of {', '.join(SVD_DRIVERS)} (CUDA only); "
                               f"got {self.svd_driver!r}.")
        if self.seed is not None and not _is_integer(self.seed):
            raise AdapterError(f"seed must be an integer; got {self.seed!r}.")


def combine_site(mode: str, parts: Sequence[LoRAFactors], weights: Sequence[float], options: CombineOptions,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(A, B)`` pair, scaling 1, that ``mode`` makes of ``parts`` (one LoRA each) at one site.

    ``svd_rank`` must be set for the svd modes (the caller picks the default, which depends on every site).
    """
    if mode == "cat":
        return cat(parts, weights)
    if mode in FACTOR_MODES:
        return combine_factors(mode, parts, weights, options, generator)
    update = merge_tensors(mode.removesuffix("_svd") if mode != "svd" else "linear",
                           [part.update() for part in parts], weights, options, generator)
    return svd_factors(update, options.svd_rank, options.svd_clamp, options.svd_full_matrices, options.svd_driver)


def cat(parts: Sequence[LoRAFactors], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks stacked: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1 | B_2 | ...]`` (exact)."""
    return (torch.cat([w * part.scaling * part.A for w, part in zip(weights, parts)], 0),
            torch.cat([part.B for part in parts], 1))


def combine_factors(mode: str, parts: Sequence[LoRAFactors], weights: Sequence[float], options: CombineOptions,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` factors merged among themselves, then ``B`` factors, each weighted by ``sqrt(|w * s|)``
    (the sign on ``A``), so the pair is a weighted sum where no pruning happens."""
    ranks = {part.A.shape[0] for part in parts}
    if len(ranks) > 1:
        raise AdapterError(f"Mode {mode!r} merges the factors entry by entry, so the adapters need one rank at each "
                           f"site; found ranks {sorted(ranks)}. Use 'cat' or an svd mode for different ranks.")
    scaled = [w * part.scaling for w, part in zip(weights, parts)]
    weights_a = [math.copysign(math.sqrt(abs(s)), s) for s in scaled]
    weights_b = [math.sqrt(abs(s)) for s in scaled]
    a = merge_tensors(mode, [part.A for part in parts], weights_a, options, generator)
    b = merge_tensors(mode, [part.B for part in parts], weights_b, options, generator)
    return a, b


def merge_tensors(kind: str, tensors: Sequence[torch.Tensor], weights: Sequence[float], options: CombineOptions,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Same-shaped ``tensors`` merged by ``kind``: ``linear`` (weighted sum), ``ties``, ``dare_linear``,
    ``dare_ties`` or ``magnitude_prune``."""
    if kind == "linear":
        kept = list(tensors)
    elif kind in ("ties", "magnitude_prune"):
        kept = [prune_magnitude(t, options.density) for t in tensors]
    else:
        kept = [prune_random(t, options.density, generator) for t in tensors]
    stacked = torch.stack(kept)
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(
        (-1,) + (1,) * (stacked.dim() - 1))
    if kind.endswith("ties"):
        return disjoint_mean(weighted, majority_sign_mask(stacked, options.majority_sign_method))
    return weighted.sum(0)


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with only its ``int(density * numel)`` largest entries (by magnitude) kept."""
    if density >= 1:
        return tensor
    flat = tensor.reshape(-1)
    mask = torch.zeros_like(flat)
    mask[flat.abs().topk(int(density * flat.numel())).indices] = 1
    return tensor * mask.view(tensor.shape)


def prune_random(tensor: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE: each entry kept with probability ``density`` and rescaled by ``1 / density`` (same expectation)."""
    if density >= 1:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * mask / density


def majority_sign_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    """Where each tensor of ``stacked`` (``[n, ...]``) agrees with the elected sign (ties elect +)."""
    sign = stacked.sign()
    votes = stacked.sum(0) if method == "total" else sign.sum(0)
    return sign == torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)


def disjoint_mean(weighted: torch.Tensor, agrees: torch.Tensor) -> torch.Tensor:
    """The mean, entry by entry, of the weighted entries that agree with the elected sign."""
    return (weighted * agrees).sum(0) / agrees.sum(0).clamp(min=1)


def svd_factors(update: torch.Tensor, rank: int, clamp: float | None = None, full_matrices: bool = True,
                driver: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of rank ``rank`` with ``B @ A`` the best approximation of ``update`` (``[out, in]``);
    ``B`` carries the singular values. Where ``rank`` exceeds the update's size, the extra rows of ``A``
    and columns of ``B`` are zero, so every site of an adapter can share one rank."""
    if driver is not None and update.device.type != "cuda":
        raise AdapterError(f"svd_driver={driver!r} works only on CUDA; this update is on {update.device.type}. "
                           "Drop svd_driver.")
    u, s, vh = torch.linalg.svd(update, full_matrices=full_matrices, driver=driver)
    kept = min(rank, s.shape[0])
    b, a = u[:, :kept] * s[:kept], vh[:kept]
    if clamp is not None:
        high = torch.quantile(torch.cat([b.flatten(), a.flatten()]), clamp)
        b, a = b.clamp(-high, high), a.clamp(-high, high)
    if kept < rank:
        a = torch.cat([a, a.new_zeros(rank - kept, a.shape[1])], 0)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - kept)], 1)
    return a, b


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
