"""AdapterHub's LoRA variants: DoRA (``use_dora``, ``DoRAConfig``), VeRA (``vera_d`` / ``vera_b``, ``VeraConfig``)
and both at once (``DvoRAConfig``), read from the tensors ``adapters`` saves.

- VeRA: ``adapters`` computes ``y + s · x (V_B · B · V_D · A)ᵀ`` (``s = alpha / r``) with the shared
  random ``A`` ``[r, in]``, ``B`` ``[out, r]`` (saved as ``shared_parameters.<name>.lora_A`` /
  ``lora_B``) and, per module, ``V_D`` ``[r, r]`` and ``V_B`` ``[out, out]``. They start diagonal
  (``vera_d``, ``vera_b`` times the identity) but train as full matrices, so a trained adapter is no
  VeRA in the paper's (or peft's, or splice's) sense: it is exactly a LoRA of rank ``r`` with
  ``A' = V_D · A`` and ``B' = V_B · B``, and is read as that :class:`~splice.methods.LoRA`.
- DoRA: ``adapters`` rescales the whole output, ``y' = m / ‖W + B'·A'‖ · (y + s · B'·A'·x)``
  (the norm without the scaling, the bias rescaled too), which is :class:`~splice.methods.DoRA`
  with ``convention="adapters"``; its magnitude is saved as ``<module>.loras.<name>.m.weight``
  (``[out, 1]``). With VeRA too (DvoRA) ``A'``, ``B'`` are VeRA's products above.

A fused projection (GPT-2's ``c_attn``) with these variants is refused: ``adapters`` sizes VeRA's
shared projections and DoRA's norms over the whole fused module.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CheckpointError
from ..methods import DoRA, MethodConfig
from .mapping import LoRAPiece, SiteIndex, lora_from_pieces

if TYPE_CHECKING:
    from ..anatomy import Anatomy

SHARED = re.compile(r"(^|.*\.)shared_parameters\.[^.]+\.(?P<param>lora_A|lora_B)$")
PARAMS = ("lora_A", "lora_B", "m.weight", "vera_D", "vera_B")  # the tensor names of one module's variant


def handles(options: dict) -> bool:
    """Whether an AdapterHub LoRA config is one of the variants this module reads."""
    return bool(options.get("use_dora")) or is_vera(options)


def is_vera(options: dict) -> bool:
    """``adapters``' own test: a float ``vera_d`` or ``vera_b`` makes its LoRA layers VeRA layers."""
    return any(isinstance(options.get(key), float) for key in ("vera_d", "vera_b"))


def shared_of(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """VeRA's shared projections ``{"lora_A": ..., "lora_B": ...}``, and the other tensors."""
    shared, rest = {}, {}
    for key, tensor in tensors.items():
        match = SHARED.fullmatch(key)
        if match:
            shared[match["param"]] = tensor
        else:
            rest[key] = tensor
    return shared, rest


def variant_from(anatomy: Anatomy, modules: dict[str, dict[str, torch.Tensor]], shared: dict[str, torch.Tensor],
                 options: dict, alpha: float, source: Path) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
    """The splice LoRA (VeRA) or DoRA config and state for the AdapterHub variant's tensors, by adapted module."""
    vera, dora = is_vera(options), bool(options.get("use_dora"))
    if vera and set(shared) != {"lora_A", "lora_B"}:
        raise CheckpointError(
            f"{source} is an AdapterHub VeRA adapter without its shared projections (shared_parameters.<name>."
            "lora_A / lora_B): adapters saves them only from a model with a head or an AdapterModel (its save "
            "filter needs '.shared_parameters.<name>.'), so no library can reproduce this adapter. Save it again "
            "from such a model.")
    wanted = {"vera_D", "vera_B"} if vera else {"lora_A", "lora_B"}
    if dora:
        wanted.add("m.weight")
    index = SiteIndex(anatomy, source)
    pieces, magnitudes = [], {}
    for module, params in modules.items():
        if set(params) != wanted:
            raise CheckpointError(f"{source}: the {_kind(vera, dora)} of {module!r} holds {sorted(params)}; "
                                  f"expected {sorted(wanted)}.")
        sites = index.locate(module)
        if len(sites) != 1:
            raise CheckpointError(f"{source}: {module!r} is a fused projection; splice reads AdapterHub "
                                  f"{_kind(vera, dora)} adapters on plain projections only.")
        site = sites[0]
        A, B = (params["vera_D"] @ shared["lora_A"], params["vera_B"] @ shared["lora_B"]) if vera \
            else (params["lora_A"], params["lora_B"])
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != site.in_features or B.shape[0] != site.out_features \
                or A.shape[0] != B.shape[1]:
            raise CheckpointError(
                f"{source}: the {_kind(vera, dora)} of {module!r} computes a [{B.shape[0]}, {A.shape[-1]}] update, "
                f"but the module is [{site.out_features}, {site.in_features}]; the file was written for another model.")
        pieces.append(LoRAPiece(site, A.contiguous(), B.contiguous(), alpha))
        if dora:
            magnitude = params["m.weight"]
            if magnitude.numel() != site.out_features:
                raise CheckpointError(f"{source}: {module}.m.weight has {magnitude.numel()} values for "
                                      f"{site.out_features} outputs.")
            magnitudes[site] = magnitude.reshape(-1)
    if not pieces:
        raise CheckpointError(f"{source} holds no {_kind(vera, dora)} tensors.")
    lora, state = lora_from_pieces(anatomy, pieces, source, r=pieces[0].A.shape[0], alpha=alpha,
                                   dropout=options.get("dropout", 0.0), use_rslora=False)
    if not dora:
        return lora, state
    state.update({f"{site.key}.magnitude": vector for site, vector in magnitudes.items()})
    fields = {f.name: getattr(lora, f.name) for f in dataclasses.fields(lora)}
    return DoRA(**fields, convention="adapters"), state


def _kind(vera: bool, dora: bool) -> str:
    return "DvoRA" if vera and dora else "VeRA" if vera else "DoRA"
