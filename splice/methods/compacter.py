"""Compacter (Mahabadi et al. 2021): a bottleneck adapter whose projections are PHM layers.

A PHM (parameterised hypercomplex multiplication) layer builds its ``[in, out]`` matrix
from ``n = phm_dim`` small "rules" ``A_i`` (``[n, n]``) and ``n`` blocks ``W_i``
(``[in/n, out/n]``, optionally low-rank ``W_i = L_i R_i``): ``H = Σ_i A_i ⊗ W_i``, and
computes ``x H + b``. With rank 1 a 768 → 24 projection trains ~4 % of a Linear's weights.

Placement, residual handling, scale, dropout and norms are the :class:`~.bottleneck.Bottleneck`'s
(``Compacter`` is one, with PHM projections); AdapterHub's ``CompacterConfig`` is
``placement="houlsby"`` and its ``CompacterPlusPlusConfig`` ``placement="pfeiffer",
residual_input=True``, both with ``reduction_factor=32`` and GELU.

Unlike AdapterHub (whose PHM up-projection starts random), the up-projection's right factor
starts at zero, so a fresh Compacter leaves the model unchanged. AdapterHub shares one rule
(``shared_phm_rule``) or one ``W`` (``shared_W_phm``) between every layer of an adapter; in
splice every PHM layer learns its own rule (``n³`` numbers), and sharing is refused by name —
reading an AdapterHub folder copies its shared rule into every layer, which computes the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..anatomy import Anatomy, Site
from ..errors import ConfigError
from .base import Delta, Recipe
from .bottleneck import Bottleneck, BottleneckDelta
from .registry import register

W_INITS = ("glorot-uniform", "glorot-normal", "normal", "phm")  # AdapterHub's hypercomplex_nonlinearity


@register
@dataclass(frozen=True, kw_only=True)
class Compacter(Bottleneck):
    """A bottleneck adapter with PHM (Kronecker-parameterised) projections (Compacter / Compacter++).

    ``phm_dim``: the number of rules and blocks (must divide the hidden size and the bottleneck width);
    ``phm_rank``: the rank of each block with ``factorized_phm_W``; ``factorized_phm_rule``: each rule as
    ``[n, 1] x [1, n]``; ``learn_phm``: train the rules (False: they stay at their random start);
    ``phm_c_init`` / ``phm_init_range`` / ``hypercomplex_nonlinearity``: how rules and blocks start;
    ``phm_bias``: a bias after each PHM layer.
    """

    method: ClassVar[str] = "compacter"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "compacter": Recipe({"placement": "houlsby", "reduction_factor": 32, "non_linearity": "gelu"}, 1e-3,
                            help="PHM bottlenecks after attention and FFN (Mahabadi et al. 2021)"),
        # placed as splice's pfeiffer recipe is: reading the residual stream needs an ffn_residual role, which
        # not every model's layout has (ViT's does not); Compacter(residual_input=True) asks for it by name
        "compacter++": Recipe({"placement": "pfeiffer", "reduction_factor": 32, "non_linearity": "gelu"}, 1e-3,
                              help="one PHM bottleneck after the FFN (Compacter++, Mahabadi et al. 2021)"),
    }

    phm_dim: int = 4
    phm_rank: int = 1
    factorized_phm_W: bool = True
    factorized_phm_rule: bool = False
    shared_phm_rule: bool = False
    shared_W_phm: bool = False
    learn_phm: bool = True
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_bias: bool = True

    def validate(self) -> None:
        super().validate()
        self._require_count("phm_dim", self.phm_dim)
        self._require_count("phm_rank", self.phm_rank)
        self._require_choice("phm_c_init", self.phm_c_init, {"normal", "uniform"})
        self._require_choice("hypercomplex_nonlinearity", self.hypercomplex_nonlinearity, W_INITS)
        self._require_positive("phm_init_range", self.phm_init_range)
        for name in ("shared_phm_rule", "shared_W_phm"):
            if getattr(self, name):
                raise ConfigError(
                    f"Compacter.{name}=True (one {'rule' if 'rule' in name else 'W'} shared by every layer) is not "
                    "implemented: each splice site is its own module, so every PHM layer learns its own. Use False "
                    "(AdapterHub folders with shared parameters still load: the shared tensor goes to every layer)."
                )

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        units = self.hidden_units(site.out_features)
        for what, size in (("hidden size", site.out_features), ("bottleneck width", units)):
            if size % self.phm_dim:
                raise ConfigError(
                    f"Compacter.phm_dim={self.phm_dim} must divide the {what} ({size}) at {site.key}; choose a "
                    f"phm_dim that divides it, or an r / reduction_factor that makes it a multiple of {self.phm_dim}."
                )
        return CompacterDelta(site.out_features, units, self, site.norm)


class PHMLinear(nn.Module):
    """``x H + b`` with ``H = Σ_i rule_i ⊗ W_i`` (AdapterHub's ``PHMLayer`` parameter names and layout).

    ``weight`` / ``bias`` give the equivalent ``nn.Linear`` tensors (``[out, in]``), which the
    bottleneck's routed kernels read.
    """

    def __init__(self, in_features: int, out_features: int, config: Compacter, zero: bool = False):
        super().__init__()
        n, rank = config.phm_dim, config.phm_rank
        self.in_features, self.out_features, self.n = in_features, out_features, n
        p, q = in_features // n, out_features // n
        blocks = {"W_left": (n, p, rank), "W_right": (n, rank, q)} if config.factorized_phm_W else {"W": (n, p, q)}
        for name, shape in blocks.items():
            setattr(self, name, nn.Parameter(torch.empty(shape)))
            _init_blocks(getattr(self, name), config)
        if zero:  # the up-projection: H = 0, so a fresh adapter adds nothing
            nn.init.zeros_(self.W_right if config.factorized_phm_W else self.W)
        rules = {"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)} if config.factorized_phm_rule \
            else {"phm_rule": (n, n, n)}
        for name, shape in rules.items():
            rule = torch.empty(shape)
            if config.phm_c_init == "normal":  # AdapterHub's start for a layer's own (unshared) rule
                rule.normal_(std=0.01)
            else:
                rule.uniform_(-0.01, 0.01)
            if config.learn_phm:
                setattr(self, name, nn.Parameter(rule))
            else:
                self.register_buffer(name, rule)
        self.b = nn.Parameter(torch.zeros(out_features)) if config.phm_bias else None

    def rule(self) -> torch.Tensor:
        return torch.bmm(self.phm_rule_left, self.phm_rule_right) if hasattr(self, "phm_rule_left") \
            else self.phm_rule

    def blocks(self) -> torch.Tensor:
        return torch.bmm(self.W_left, self.W_right) if hasattr(self, "W_left") else self.W

    @property
    def weight(self) -> torch.Tensor:
        """``H`` transposed: the ``[out, in]`` weight of the same linear map."""
        return phm_matrix(self.rule(), self.blocks()).t()

    @property
    def bias(self) -> torch.Tensor:
        return self.b if self.b is not None else self.weight.new_zeros(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.b)


def phm_matrix(rule: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``H = Σ_i rule_i ⊗ blocks_i`` (``[n, n, n]`` rules, ``[n, p, q]`` blocks) as one ``[n·p, n·q]`` matrix."""
    n, p, q = blocks.shape
    # (A ⊗ W)[a·p + c, b·q + d] = A[a, b] · W[c, d]
    return torch.einsum("iab,icd->acbd", rule.to(blocks.dtype), blocks).reshape(n * p, n * q)


def _init_blocks(blocks: nn.Parameter, config: Compacter) -> None:
    """Each block's start, by ``hypercomplex_nonlinearity`` (AdapterHub: glorot per block, or normal)."""
    with torch.no_grad():
        for block in blocks:
            if config.hypercomplex_nonlinearity == "normal":
                block.normal_(std=config.phm_init_range)
            elif config.hypercomplex_nonlinearity == "glorot-uniform":
                nn.init.xavier_uniform_(block)
            else:  # "glorot-normal", and "phm" (which AdapterHub also starts with glorot-normal)
                nn.init.xavier_normal_(block)


class CompacterDelta(BottleneckDelta):
    """A :class:`BottleneckDelta` whose down- and up-projections are :class:`PHMLinear` layers."""

    def __init__(self, features: int, units: int, config: Compacter, norm: nn.Module | None = None):
        super().__init__(features, units, config, norm)
        self.down = PHMLinear(features, units, config)
        self.up = PHMLinear(units, features, config, zero=True)


__all__ = ["Compacter", "CompacterDelta", "PHMLinear", "phm_matrix"]
