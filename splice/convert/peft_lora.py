"""peft's LoRA and IA³, read and written: their options (each honoured or refused by name) and how their
tensors map to splice's sites. :mod:`.peft` and :mod:`.peft_write` hold the folder around them; the other
method families are :mod:`.peft_lora_family` (DoRA, VeRA, built on these) and :mod:`.peft_products`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapter import Adapter
from ..anatomy import Site
from ..anatomy.linear import linear_shape
from ..errors import AdapterError, CheckpointError
from .mapping import LoRAPiece, SiteIndex, ia3_from_vectors, lora_from_pieces, rows_of
from .options import UNSET, refuse_unknown
from .peft_format import INERT, PREFIX, by_module, has_conv1d, peft_names, rows
from .peft_heads import TaskHead

if TYPE_CHECKING:
    from ..anatomy import Anatomy

# Options splice reads and honours.
_READ = {"r", "lora_alpha", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern", "bias", "init_lora_weights"}
# Initialisations that leave the base model's weights alone (PiSSA, OLoRA, CorDA and LoftQ rewrite them).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")
_WHAT = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "lora_bias": "a trained bias on lora_B",
    "trainable_token_indices": "trainable rows of the embedding matrix",
    "layer_replication": "replicated base layers",
    "target_parameters": "LoRA on raw parameters (e.g. MoE experts)",
    "use_qalora": "QA-LoRA's pooled inputs",
    "alora_invocation_tokens": "activated LoRA (applied only after invocation tokens)",
    "megatron_config": "Megatron-parallel layers",
}


def check_options(config: dict[str, Any], source: Path) -> None:
    """Refuse, by name, every option that would change the adapter's math in a way splice does not implement."""
    if config.get("bias", "none") != "none":
        raise CheckpointError(
            f"{source}: bias={config['bias']!r} means peft also trained the base model's biases; splice LoRA "
            "adapters never change base weights. Only bias='none' adapters can be read."
        )
    init = config.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise CheckpointError(
            f"{source}: init_lora_weights={init!r} rewrites the base model's weights (PiSSA, OLoRA, CorDA and "
            "LoftQ do), so the adapter does not work on the plain base. Convert it to a plain LoRA with peft first "
            "(save_pretrained(..., path_initial_model_for_weight_conversion=...))."
        )
    refuse_unknown(config, source, f"peft {config.get('peft_type')}", INERT | _READ, _WHAT, off=UNSET)


def read_lora(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
    """A splice LoRA config and state from peft LoRA tensors; returns (config, state, unused tensors)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight", key)
        if match:
            parts.setdefault(match["module"], {})[match["part"]] = tensor
        else:
            rest[key] = tensor
    if not parts:
        raise CheckpointError(f"{source} holds no LoRA tensors (…lora_A.weight / …lora_B.weight).")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    index = SiteIndex(anatomy, source)
    pieces = []
    for module, pair in parts.items():
        A, B = pair.get("lora_A"), pair.get("lora_B")
        if A is None or B is None or A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise CheckpointError(
                f"{source}: the LoRA of {module!r} needs lora_A [r, in] and lora_B [out, r]; found "
                f"{None if A is None else list(A.shape)} and {None if B is None else list(B.shape)}."
            )
        rank = _pattern_value(config.get("rank_pattern") or {}, module, r, source)
        if A.shape[0] != rank:
            raise CheckpointError(
                f"{source}: adapter_config.json gives {module!r} rank {rank}, but its lora_A has rank {A.shape[0]}."
            )
        module_alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha, source)
        sites = index.locate(module)
        index.fused_rows(sites, B.shape[0], module)
        pieces += [LoRAPiece(site, A, rows_of(B, site), module_alpha) for site in sites]
    method, state = lora_from_pieces(anatomy, pieces, source, r=r, alpha=alpha,
                                     dropout=config.get("lora_dropout", 0.0),
                                     use_rslora=config.get("use_rslora", False))
    return method, state, rest


def read_ia3(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
    """A splice IA3 config and state from peft ``ia3_l`` vectors; returns (config, state, unused tensors)."""
    index = SiteIndex(anatomy, source)
    vectors: dict[Site, torch.Tensor] = {}
    inputs: set[Site] = set()
    rest = {}
    for key, tensor in tensors.items():
        if not key.endswith(".ia3_l"):
            rest[key] = tensor
            continue
        module = key.removesuffix(".ia3_l")
        sites = index.locate(module)
        if tensor.dim() != 2 or 1 not in tensor.shape:
            raise CheckpointError(f"{source}: {key} must be [1, in] or [out, 1], got {list(tensor.shape)}.")
        if tensor.shape[0] == 1 and tensor.shape[1] != 1:  # a feedforward module: peft scales its input
            if len(sites) != 1 or sites[0].columns is not None:
                raise CheckpointError(
                    f"{source}: IA3 scales the input of the fused module {module!r}, which feeds several roles "
                    f"({', '.join(s.role for s in sites)}); splice scales inputs per role and cannot hold this."
                )
            vectors[sites[0]] = tensor.reshape(-1)
            inputs.add(sites[0])
        else:
            index.fused_rows(sites, tensor.shape[0], module)
            vectors.update({site: rows_of(tensor, site).reshape(-1) for site in sites})
    if not vectors:
        raise CheckpointError(f"{source} holds no IA3 tensors (…ia3_l).")
    method, state = ia3_from_vectors(anatomy, vectors, inputs, source)
    return method, state, rest


def _pattern_value(pattern: dict, module: str, default, source: Path):
    """peft's rank_pattern / alpha_pattern lookup: the first key matching the end of the module's name."""
    for key, value in pattern.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error as error:
            raise CheckpointError(f"{source}: pattern {key!r} is not a valid regular expression ({error}).") from error
    return default



# -- writing -----------------------------------------------------------------------------------------------


def export_lora(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    config = adapter.config.plain()  # a PiSSA / OLoRA start: the plain LoRA of twice the rank it computes
    tensors, ranks, alphas = {}, {}, {}
    for path, items in by_module(anatomy, adapter, head).items():
        sites = [site for site, _ in items]
        out_rows = linear_shape(sites[0].module)[1]
        As = [delta.factors()[0].detach().cpu() for _, delta in items]
        Bs = [delta.factors()[1].detach().cpu() for _, delta in items]
        shared = len({(config.rank_at(s), config.alpha_at(s)) for s in sites}) == 1 and all(
            torch.equal(A, As[0]) for A in As)
        if shared:  # one LoRA of the same rank over the whole module: A shared, B stacked by rows
            A, rank, alpha = As[0], config.rank_at(sites[0]), config.alpha_at(sites[0])
            B = torch.zeros(out_rows, rank, dtype=Bs[0].dtype)
            for site, part in zip(sites, Bs):
                B.index_copy_(0, rows(site), part)
        else:  # roles with their own A: stack the ranks, fold each role's scaling into its block of B
            A, rank = torch.cat(As), sum(a.shape[0] for a in As)
            alpha = math.sqrt(rank) if config.use_rslora else rank  # peft scaling 1
            B = torch.zeros(out_rows, rank, dtype=Bs[0].dtype)
            offset = 0
            for (site, delta), part in zip(items, Bs):
                B[:, offset:offset + part.shape[1]].index_copy_(0, rows(site), part * delta.scaling)
                offset += part.shape[1]
        tensors[f"{PREFIX}{path}.lora_A.weight"] = A
        tensors[f"{PREFIX}{path}.lora_B.weight"] = B
        ranks[path], alphas[path] = rank, alpha
    targets, _ = peft_names(anatomy, head, set(ranks), set())
    return {
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "target_modules": targets,
        "rank_pattern": {re.escape(p): v for p, v in ranks.items() if v != config.r},
        "alpha_pattern": {re.escape(p): v for p, v in alphas.items() if v != config.alpha},
        "bias": "none",
        "fan_in_fan_out": has_conv1d(adapter),
        "init_lora_weights": True,
    }, tensors


def export_ia3(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, inputs = {}, set()
    for path, items in by_module(anatomy, adapter, head).items():
        (site, delta), *_ = items
        scale = delta.scale.detach().cpu()
        if delta.stage == "input":
            if len(items) > 1 or site.columns is not None:
                raise AdapterError(
                    f"Cannot write IA3 on {path!r} for peft: it scales the input of a fused module, shared by "
                    f"{', '.join(s.role for s, _ in items)}."
                )
            tensors[f"{PREFIX}{path}.ia3_l"] = scale.reshape(1, -1)
            inputs.add(path)
        else:
            vector = torch.ones(linear_shape(site.module)[1], dtype=scale.dtype)
            for part_site, part in items:
                vector.index_copy_(0, rows(part_site), part.scale.detach().cpu())
            tensors[f"{PREFIX}{path}.ia3_l"] = vector.reshape(-1, 1)
    paths = {key.removeprefix(PREFIX).removesuffix(".ia3_l") for key in tensors}
    targets, feedforward = peft_names(anatomy, head, paths, inputs)
    return {
        "peft_type": "IA3",
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": has_conv1d(adapter),
    }, tensors


