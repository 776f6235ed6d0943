"""From another library's module names and tensors to splice sites, configs and checkpoint state.

peft and AdapterHub name what they adapt by module path (``encoder.layer.0.
attention.self.query``); splice speaks in roles. :class:`SiteIndex` maps a path
to the role sites hosted by that module (three for a fused ``c_attn``), allowing
for a different wrapper prefix (``model.`` of ``LlamaForCausalLM`` vs. ``LlamaModel``).
The builders turn per-site tensors into one splice config plus the checkpoint
state that :func:`splice.checkpoint.install` loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from ..errors import CheckpointError, ConfigError
from ..methods import IA3, LoRA, MethodConfig
from ..methods.base import columns_of


def match_path(name: str, paths: Iterable[str]) -> str | None:
    """The one path among ``paths`` that is ``name``, up to a wrapper prefix on either side; else None."""
    paths = list(paths)
    if name in paths:
        return name
    found = [p for p in paths if p.endswith("." + name) or name.endswith("." + p)]
    return found[0] if len(found) == 1 else None


class SiteIndex:
    """The projection sites of a model, by the path of the module hosting them."""

    def __init__(self, anatomy: Anatomy, source: Path):
        self.anatomy = anatomy
        self.source = source
        self.by_path: dict[str, list[Site]] = {}
        for role in PROJECTION_ROLES:
            for site in anatomy.sites(role):
                self.by_path.setdefault(anatomy.module_path(site.module), []).append(site)

    def locate(self, name: str) -> list[Site]:
        """The sites on the module ``name``, or a clear error naming it if splice adapts no role there."""
        path = match_path(name, self.by_path)
        if path is None:
            examples = ", ".join(list(self.by_path)[:4])
            raise CheckpointError(
                f"{self.source} adapts the module {name!r}, which is not a role site splice knows in this "
                f"{self.anatomy.model_type} model (role sites are projections such as {examples}). Map it to a "
                "role with splice.attach(model, roles={'<role>': '<path inside a block>'}) if it is one."
            )
        return self.by_path[path]

    def fused_rows(self, sites: list[Site], rows: int, name: str) -> None:
        """Refuse a tensor of ``rows`` output rows that the sites on module ``name`` do not exactly cover."""
        covered = sum(site.out_features for site in sites)
        if covered != rows:
            raise CheckpointError(
                f"{self.source}: the update of {name!r} has {rows} output rows, but splice's roles there "
                f"({', '.join(s.role for s in sites)}) cover {covered}; the file was written for another model."
            )


def rows_of(tensor: torch.Tensor, site: Site) -> torch.Tensor:
    """The rows of a fused module's ``tensor`` that belong to ``site`` (all of them for a plain module)."""
    return columns_of(tensor, site.columns, 0).contiguous()


def placement(anatomy: Anatomy, sites: list[Site], source: Path) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """``targets`` and ``layers`` of a splice config acting on exactly ``sites``.

    A splice config adapts the same roles in every chosen layer; a checkpoint
    adapting, say, ``q`` in layer 0 but ``v`` only in layer 1 cannot be one, and is refused.
    """
    roles = tuple(role for role in PROJECTION_ROLES if any(site.role == role for site in sites))
    layer_count = max(len(blocks) for blocks in anatomy.blocks.values())
    used = sorted({site.layer for site in sites})
    layers = None if used == list(range(layer_count)) else tuple(used)
    expected = {site.key for role in roles for site in anatomy.require(role, layers)}
    found = {site.key for site in sites}
    if expected != found:
        raise CheckpointError(
            f"{source} adapts roles {', '.join(roles)} in a pattern one splice adapter cannot hold: it "
            f"lacks {sorted(expected - found)[:6]} and has {sorted(found - expected)[:6]} beyond the same "
            "roles in the same layers. splice adapters act on the same roles in every chosen layer."
        )
    return roles, layers


@dataclass
class LoRAPiece:
    """One site's LoRA: ``A`` ``[r, in]``, ``B`` ``[out, r]`` and its alpha (scaling = alpha / r)."""

    site: Site
    A: torch.Tensor
    B: torch.Tensor
    alpha: float


def lora_from_pieces(anatomy: Anatomy, pieces: list[LoRAPiece], source: Path, *, r: int, alpha: float,
                     dropout: float, use_rslora: bool) -> tuple[LoRA, dict[str, torch.Tensor]]:
    """A splice LoRA config (``rank_pattern`` / ``alpha_pattern`` where sites differ) and its state."""
    targets, layers = placement(anatomy, [p.site for p in pieces], source)
    ranks = {p.site: p.A.shape[0] for p in pieces}
    alphas = {p.site: p.alpha for p in pieces}
    config = _config(LoRA, source, r=r, alpha=alpha, dropout=dropout, targets=targets, layers=layers,
                     use_rslora=use_rslora, rank_pattern=_pattern(ranks, r), alpha_pattern=_pattern(alphas, alpha))
    state = {}
    for p in pieces:
        state[f"{p.site.key}.lora_A.weight"] = p.A
        state[f"{p.site.key}.lora_B.weight"] = p.B
    return config, state


def ia3_from_vectors(anatomy: Anatomy, vectors: dict[Site, torch.Tensor], inputs: set[Site],
                     source: Path) -> tuple[IA3, dict[str, torch.Tensor]]:
    """A splice IA3 config scaling each site's output (or, for ``inputs``, its input) by its vector."""
    targets, layers = placement(anatomy, list(vectors), source)
    scale_inputs = tuple(role for role in targets if any(site.role == role for site in inputs))
    mixed = [role for role in scale_inputs if any(s.role == role and s not in inputs for s in vectors)]
    if mixed:
        raise CheckpointError(
            f"{source} scales the input of role(s) {mixed} in some layers and the output in others; a splice "
            "IA3 adapter scales one side of a role everywhere."
        )
    config = _config(IA3, source, targets=targets, scale_inputs=scale_inputs, layers=layers)
    return config, {f"{site.key}.scale": vector.reshape(-1) for site, vector in vectors.items()}


def _pattern(values: dict[Site, float], default: float) -> dict[str, float]:
    """Per-role (else per-site) entries for the sites whose value differs from ``default``."""
    pattern = {}
    for role in PROJECTION_ROLES:
        own = {site: value for site, value in values.items() if site.role == role}
        if len(set(own.values())) == 1:
            value = next(iter(own.values()))
            if value != default:
                pattern[role] = value
        else:
            pattern.update({site.key: value for site, value in own.items() if value != default})
    return pattern


def _config(cls: type[MethodConfig], source: Path, **options) -> MethodConfig:
    try:
        return cls(**options)
    except ConfigError as error:
        raise CheckpointError(f"{source} holds options splice cannot use: {error}") from error


def head_state(model_paths: Iterable[str], module: str, params: dict[str, torch.Tensor],
               source: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """The path in this model of the head another library saved as ``module``, and its state as ``head.*``."""
    path = match_path(module, model_paths)
    if path is None:
        raise CheckpointError(
            f"{source} carries its own copy of the module {module!r}, which this model does not have. Load it "
            "into the model class it was trained with (e.g. AutoModelForSequenceClassification for a classifier)."
        )
    return path, {f"head.{param}": tensor for param, tensor in params.items()}
