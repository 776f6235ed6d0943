"""LoRA starts from the principal part of the base weight: PiSSA (Meng et al. 2024) and OLoRA (Büyükakyüz 2024).

PiSSA takes the top ``r`` singular triplets of ``W = U S Vᵀ``: ``A = sqrt(S_r / s) V_rᵀ``,
``B = U_r sqrt(S_r / s)`` (``s`` the LoRA scaling), so ``s·B·A`` is the best rank-``r``
part of ``W``; ``"pissa_niter_<n>"`` finds it with ``n`` subspace iterations
(``torch.svd_lowrank``) instead of a full SVD. OLoRA takes ``W = Q R``: ``B = Q[:, :r]``,
``A = R[:r]``. Both as peft's ``init_lora_weights`` computes them, on the float32 weight.

peft then rewrites the base weight to ``W - s·B·A``; a splice delta leaves the base
alone and keeps ``(A, B)`` at the start as its fixed pair (see :class:`.lora.LoRADelta`).
This module is a helper of :mod:`.lora`, not a method.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..anatomy import Site
from ..errors import ConfigError
from .base import MethodConfig, columns_of, float_weight

PLAIN = ("kaiming", "gaussian")
_PRINCIPAL = re.compile(r"^(pissa|pissa_niter_[1-9][0-9]{0,2}|olora)$")


def is_principal(init: str) -> bool:
    """True for the starts that begin from the base weight's principal part (and so hold a fixed pair)."""
    return isinstance(init, str) and bool(_PRINCIPAL.match(init))


def check_init(config: MethodConfig, init) -> None:
    """Refuse an ``init`` that is none of the starts LoRA knows, naming them."""
    if init not in PLAIN and not is_principal(init):
        raise ConfigError(
            f"{type(config).__name__}.init must be one of 'kaiming', 'gaussian', 'pissa', 'pissa_niter_<n>' "
            f"(n from 1 to 999) or 'olora', got {init!r}."
        )


def start(delta: nn.Module, init: str, site: Site | None) -> None:
    """Set ``delta``'s trained pair and fixed pair to the principal start of ``site``'s weight.

    Nothing is computed for a delta on the meta device (a loader's shape check).
    """
    if delta.lora_A.weight.is_meta:
        return
    if site is None:
        raise ConfigError(f"LoRA init={init!r} starts from the base weight, so its delta needs the site it adapts.")
    weight = columns_of(float_weight(site, f"LoRA init={init!r}"), site.columns, 0).detach().float()
    A, B = _decompose(weight, init, delta.lora_A.weight.shape[0], delta.scaling)
    with torch.no_grad():
        for trained, fixed, value in ((delta.lora_A.weight, delta.fixed_A, A), (delta.lora_B.weight, delta.fixed_B, B)):
            trained.copy_(value)
            fixed.copy_(value)


def _decompose(weight: torch.Tensor, init: str, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [r, in], B [out, r])`` of the principal start of the ``[out, in]`` float32 ``weight``."""
    if r > min(weight.shape):
        raise ConfigError(f"LoRA init={init!r} needs r <= min(out, in) = {min(weight.shape)} of the weight it "
                          f"decomposes, got r={r}.")
    if init == "olora":
        Q, R = torch.linalg.qr(weight)
        return R[:r].contiguous(), Q[:, :r].contiguous()
    if init == "pissa":
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        U, S, V = torch.svd_lowrank(weight, r, niter=int(init.rsplit("_", 1)[1]))
        Vh = V.t()
    root = torch.sqrt(S / scaling)
    return (torch.diag(root) @ Vh).contiguous(), (U @ torch.diag(root)).contiguous()
