"""peft's format for the LoRA family beyond plain LoRA: DoRA (``use_dora``) and VeRA (``peft_type: VERA``).

DoRA is a peft LoRA with ``use_dora: true`` and one more tensor per module,
``<module>.lora_magnitude_vector`` (``[out]``); a fused module (GPT-2 ``c_attn``) holds
one vector over all its rows, split by rows over splice's q/k/v sites (a row's norm is
its own, so the split is exact). VeRA holds ``<module>.vera_lambda_b`` (``[out]``),
``<module>.vera_lambda_d`` (``[r]``) and, with ``save_projection``, the shared frozen
projections ``base_model.vera_A`` (``[r, largest in]``) and ``base_model.vera_B``
(``[largest out, r]``); without it they are drawn again from ``projection_prng_key``.
A LoRA that started from PiSSA / OLoRA is written as peft writes one converted with
``path_initial_model_for_weight_conversion``: a plain LoRA of twice the rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapter import Adapter
from ..anatomy import Site
from ..anatomy.linear import linear_shape
from ..errors import AdapterError, CheckpointError
from ..methods.dora import DoRA
from ..methods.vera import VeRA
from . import peft_format, peft_lora
from .mapping import SiteIndex, placement, rows_of
from .peft_heads import TaskHead

if TYPE_CHECKING:
    from ..anatomy import Anatomy

DORA = "DORA"  # the kind of a LORA config with use_dora: true (peft has no peft_type of its own for it)
MAGNITUDE = "lora_magnitude_vector"
PROJECTIONS = {"vera_A": "base_model.vera_A", "vera_B": "base_model.vera_B"}

# VeRA options that do not change what a loaded adapter computes (bookkeeping, where it lives, its start).
_VERA_INERT = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
               "inference_mode", "target_modules", "layers_to_transform", "layers_pattern", "fan_in_fan_out",
               "modules_to_save", "init_weights", "d_initial"}
_VERA_READ = {"r", "projection_prng_key", "save_projection", "vera_dropout", "bias"}


def kind_of(config: dict[str, Any]) -> Any:
    """The reader a peft config goes to: its ``peft_type``, or ``"DORA"`` for a LoRA with ``use_dora``."""
    kind = config.get("peft_type")
    return DORA if kind == "LORA" and config.get("use_dora") else kind


def check_options(config: dict[str, Any], source: Path) -> None:
    """Refuse, by name, the options of a DoRA or VeRA config that splice does not implement."""
    if kind_of(config) == DORA:
        peft_lora.check_options({k: v for k, v in config.items() if k != "use_dora"}, source)
        return
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{source}: bias={config['bias']!r} means peft also trained the base model's biases; "
                              "splice adapters never change base weights. Only bias='none' adapters can be read.")
    for key, value in config.items():
        if key not in _VERA_INERT and key not in _VERA_READ and value not in (None, False, {}, [], ""):
            raise CheckpointError(f"{source}: VeRA option {key}={value!r} changes what the adapter computes, and "
                                  "splice does not implement it.")


# -- reading -----------------------------------------------------------------------------------------


def read_dora(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
    """A splice DoRA config and state from peft ``use_dora`` tensors; returns (config, state, unused tensors)."""
    magnitudes = {key.removesuffix(f".{MAGNITUDE}"): t for key, t in tensors.items() if key.endswith(f".{MAGNITUDE}")}
    lora, state, rest = peft_lora.read_lora(
        anatomy, config, {k: t for k, t in tensors.items() if not k.endswith(f".{MAGNITUDE}")}, source)
    index = SiteIndex(anatomy, source)
    for module, vector in magnitudes.items():
        sites = index.locate(module)
        if vector.dim() != 1:
            raise CheckpointError(f"{source}: {module}.{MAGNITUDE} must be [out], got {list(vector.shape)}.")
        index.fused_rows(sites, vector.shape[0], module)
        state.update({f"{site.key}.magnitude": rows_of(vector, site) for site in sites})
    missing = sorted({key.rsplit(".", 2)[0] for key in state if key.endswith("lora_A.weight")}
                     - {key.removesuffix(".magnitude") for key in state if key.endswith(".magnitude")})
    if missing:
        raise CheckpointError(f"{source} is a DoRA adapter (use_dora), but holds no {MAGNITUDE} for {missing[:4]}.")
    fields = {f.name: getattr(lora, f.name) for f in dataclasses.fields(lora)}
    return DoRA(**fields), state, rest


def read_vera(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
    """A splice VeRA config and state from peft VeRA tensors; returns (config, state, unused tensors)."""
    index = SiteIndex(anatomy, source)
    vectors: dict[Site, dict[str, torch.Tensor]] = {}
    state, rest = {}, {}
    projections = {name: tensors.pop(key) for name, key in PROJECTIONS.items() if key in tensors}
    for key, tensor in tensors.items():
        module, _, part = key.rpartition(".")
        if part not in ("vera_lambda_b", "vera_lambda_d"):
            rest[key] = tensor
            continue
        if tensor.dim() != 1:
            raise CheckpointError(f"{source}: {key} must be a vector, got {list(tensor.shape)}.")
        sites = index.locate(module)
        if part == "vera_lambda_b":
            index.fused_rows(sites, tensor.shape[0], module)
        for site in sites:
            vectors.setdefault(site, {})[part] = rows_of(tensor, site) if part == "vera_lambda_b" else tensor
    if not vectors:
        raise CheckpointError(f"{source} holds no VeRA tensors (…vera_lambda_b / …vera_lambda_d).")
    for site, pair in vectors.items():
        if set(pair) != {"vera_lambda_b", "vera_lambda_d"}:
            raise CheckpointError(f"{source}: the VeRA of {site.key} needs both vera_lambda_b and vera_lambda_d.")
        state[f"{site.key}.lambda_b"], state[f"{site.key}.lambda_d"] = pair["vera_lambda_b"], pair["vera_lambda_d"]
    save_projection = config.get("save_projection", True)
    if save_projection and set(projections) != set(PROJECTIONS):
        lacking = sorted(set(PROJECTIONS) - set(projections))
        raise CheckpointError(f"{source} says save_projection=true but lacks {lacking}; save it again with peft.")
    state.update({f"shared.{name}": tensor for name, tensor in projections.items()})
    targets, layers = placement(anatomy, list(vectors), source)
    try:
        method = VeRA(r=config.get("r", 256), targets=targets, layers=layers, dropout=config.get("vera_dropout", 0.0),
                      projection_prng_key=config.get("projection_prng_key", 0), save_projection=bool(save_projection),
                      d_initial=config.get("d_initial", 0.1))
    except Exception as error:
        raise CheckpointError(f"{source} holds VeRA options splice cannot use: {error}") from error
    return method, state, rest


# -- writing -----------------------------------------------------------------------------------------


def export_dora(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """A peft LoRA config with ``use_dora`` and its tensors, magnitudes stacked by rows over fused modules."""
    if adapter.config.convention != "peft":
        raise AdapterError(
            f"This DoRA computes what AdapterHub's does (convention={adapter.config.convention!r}: the norm without "
            "the scaling, the bias rescaled), which peft's use_dora cannot express. Save it with format='splice', "
            "or convert it to a LoRA (model.to_lora / splice convert --lora-rank) first.")
    config, tensors = peft_lora.export_lora(anatomy, adapter, head)
    for path, items in peft_format.by_module(anatomy, adapter, head).items():
        vector = torch.zeros(linear_shape(items[0][0].module)[1])
        for site, delta in items:
            vector.index_copy_(0, peft_format.rows(site), delta.magnitude.detach().cpu().float())
        tensors[f"{peft_format.PREFIX}{path}.{MAGNITUDE}"] = vector
    return {**config, "use_dora": True}, tensors


def export_vera(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """A peft VeRA config and its tensors (the projections too when the adapter saves them)."""
    config: VeRA = adapter.config
    tensors = {}
    for path, items in peft_format.by_module(anatomy, adapter, head).items():
        lambda_d = items[0][1].lambda_d.detach().cpu()
        if any(not torch.equal(delta.lambda_d.detach().cpu(), lambda_d) for _, delta in items):
            raise AdapterError(
                f"Cannot write this VeRA for peft: the roles of the fused module {path!r} "
                f"({', '.join(s.role for s, _ in items)}) have their own lambda_d, and peft keeps one per module."
            )
        lambda_b = torch.zeros(linear_shape(items[0][0].module)[1], dtype=lambda_d.dtype)
        for site, delta in items:
            lambda_b.index_copy_(0, peft_format.rows(site), delta.lambda_b.detach().cpu())
        tensors[f"{peft_format.PREFIX}{path}.vera_lambda_b"] = lambda_b
        tensors[f"{peft_format.PREFIX}{path}.vera_lambda_d"] = lambda_d
    if config.save_projection:
        tensors.update({key: getattr(adapter.shared, name).detach().cpu() for name, key in PROJECTIONS.items()})
    paths = {key.removeprefix(peft_format.PREFIX).rpartition(".")[0] for key in tensors if key.endswith("lambda_d")}
    targets, _ = peft_format.peft_names(anatomy, head, paths, set())
    return {
        "peft_type": "VERA",
        "r": config.r,
        "target_modules": targets,
        "projection_prng_key": config.projection_prng_key,
        "save_projection": config.save_projection,
        "vera_dropout": config.dropout,
        "d_initial": config.d_initial,
        "fan_in_fan_out": peft_format.has_conv1d(adapter),
        "bias": "none",
        "init_weights": True,
    }, tensors


READERS = {DORA: read_dora, "VERA": read_vera}
WRITERS = {"dora": export_dora, "vera": export_vera}
