"""peft's format: read LoRA, IA³, prompt and prefix tuning, and write them for ``peft.PeftModel.from_pretrained``.

A peft folder holds ``adapter_config.json`` (the ``LoraConfig`` / ``IA3Config``
fields) and ``adapter_model.safetensors`` (or a ``.bin``) with tensors named
``base_model.model.<module path>.lora_A.weight``, ``….ia3_l`` and, for
``modules_to_save``, ``base_model.model.<module path>.<param>``.

Where the adapter lives (``target_modules``, ``exclude_modules``,
``layers_to_transform``, ``layers_pattern``) was decided by peft when it was
trained, and the tensor names record the outcome: splice reads the sites from
them. Every other option is either honoured or refused by name. Fused modules
(GPT-2 ``c_attn``) carry one LoRA over all of q, k and v in peft; splice splits
``B`` by rows over its q/k/v sites and gives each the same ``A`` (the same
product), and writes the reverse. Prompt and prefix tuning ("prompt learning"
in peft) are in :mod:`.prompts`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ..adapter import Adapter
from ..anatomy import Site
from ..anatomy.linear import linear_shape
from ..checkpoint import (
    build_adapter,
    check_materialised,
    claim_name,
    install,
    write_folder,
)
from ..errors import AdapterError, AnatomyError, CheckpointError
from . import peft_lora_family, prompts
from .detect import FOREIGN_CONFIG, read_json
from .mapping import LoRAPiece, SiteIndex, head_state, ia3_from_vectors, lora_from_pieces, rows_of
from .peft_heads import TaskHead, task_head
from .weights import read_weights

if TYPE_CHECKING:
    from ..model import AdaptedModel

WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."

# Options that do not change what a loaded adapter computes: bookkeeping, initialisation,
# training-time settings, and where the adapter lives (which the tensor names record).
_INERT = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "target_modules", "exclude_modules", "fan_in_fan_out", "modules_to_save",
    "layers_to_transform", "layers_pattern", "megatron_core", "runtime_config", "qalora_group_size",
    "eva_config", "corda_config", "lora_ga_config", "loftq_config", "ensure_weight_tying", "init_ia3_weights",
    "feedforward_modules",  # IA3: the saved vector's shape, [1, in] or [out, 1], says which side it scales
}
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


# -- reading -----------------------------------------------------------------------------------------


def load_peft(model: AdaptedModel, folder: Path, name: str | None = None) -> str:
    """Add the peft adapter in ``folder`` to ``model`` (LoRA, IA³, prompt or prefix tuning); returns its name.

    Everything is checked (options, module names, shapes) before the model is touched.
    """
    config = read_json(folder / FOREIGN_CONFIG)
    source = folder / FOREIGN_CONFIG
    readers: dict[str, Callable] = {"LORA": _read_lora, "IA3": _read_ia3, **peft_lora_family.READERS,
                                    **{kind: prompts.read for kind in prompts.KINDS}}
    kind = peft_lora_family.kind_of(config)
    if kind not in readers:
        raise CheckpointError(f"{source}: peft_type {kind!r} is not one splice reads; it reads {', '.join(readers)}.")
    try:
        if kind in prompts.KINDS:
            prompts.check_options(model, config, source)
        elif kind in peft_lora_family.READERS:
            peft_lora_family.check_options(config, source)
        else:
            _check_options(config, source)
        name = claim_name(model, name or folder.name, folder)
        weights_path, tensors = read_weights(folder, WEIGHTS_FILES)
        if kind not in prompts.KINDS:
            tensors = {key.removeprefix(PREFIX): tensor for key, tensor in tensors.items()}
        method, state, rest = readers[kind](model, config, tensors, weights_path)
    except AnatomyError as error:  # e.g. a prompt for a model that takes no token ids
        raise CheckpointError(f"The adapter in {folder} does not fit this model: {error}") from error
    head, head_tensors = _head(model, config, rest, weights_path)
    state.update(head_tensors)
    adapter = build_adapter(model, method, head, folder, {key: t.shape for key, t in state.items()}, weights_path)
    install(model, name, adapter, state)
    return name


def _check_options(config: dict[str, Any], source: Path) -> None:
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
    for key, value in config.items():
        if key in _INERT or key in _READ or value in (None, False, {}, [], ""):
            continue
        what = f" ({_WHAT[key]})" if key in _WHAT else ""
        raise CheckpointError(
            f"{source}: peft option {key}={value!r}{what} changes what the adapter computes, and splice does not "
            "implement it. Only plain LoRA and IA3 adapters can be read."
        )


def _read_lora(model: AdaptedModel, config: dict, tensors: dict[str, torch.Tensor], source: Path):
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
    index = SiteIndex(model.anatomy, source)
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
    method, state = lora_from_pieces(model.anatomy, pieces, source, r=r, alpha=alpha,
                                     dropout=config.get("lora_dropout", 0.0),
                                     use_rslora=config.get("use_rslora", False))
    return method, state, rest


def _read_ia3(model: AdaptedModel, config: dict, tensors: dict[str, torch.Tensor], source: Path):
    """A splice IA3 config and state from peft ``ia3_l`` vectors; returns (config, state, unused tensors)."""
    index = SiteIndex(model.anatomy, source)
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
    method, state = ia3_from_vectors(model.anatomy, vectors, inputs, source)
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


def _head(model: AdaptedModel, config: dict, rest: dict[str, torch.Tensor], source: Path):
    """The base module the adapter saved its own copy of (``modules_to_save``), and its tensors as ``head.*``."""
    if not rest:
        return None, {}
    saved = config.get("modules_to_save") or []
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in rest.items():
        parts = key.split(".")
        cut = next((i for i in range(1, len(parts)) if any(".".join(parts[:i]).endswith(m) for m in saved)), None)
        if cut is None:
            raise CheckpointError(
                f"{source} holds tensors that are neither its adapter's nor a module_to_save's, e.g. {key!r}; "
                "splice does not know what they belong to."
            )
        modules.setdefault(".".join(parts[:cut]), {})[".".join(parts[cut:])] = tensor
    if len(modules) > 1:
        raise CheckpointError(
            f"{source} saves its own copies of {len(modules)} modules ({', '.join(modules)}); a splice adapter "
            "carries at most one head."
        )
    module, params = next(iter(modules.items()))
    return head_state((name for name, _ in model.base.named_modules()), module, params, source)


# -- writing -----------------------------------------------------------------------------------------


def save_peft(model: AdaptedModel, name: str, path: str | Path) -> Path:
    """Write adapter ``name`` (LoRA, IA³, prompt or prefix tuning) for ``peft.PeftModel.from_pretrained``.

    A copied base head is written as ``modules_to_save``; so is a splice head, as
    the task model's own classifier, where that computes the same
    (:mod:`.peft_heads`; then every module path is the task model's, and
    ``task_type`` says which Auto class to load the base with). Fused sites (GPT-2
    ``c_attn``) become one peft LoRA over the fused module: with the same rank
    when the roles share ``A``, else with their ranks stacked (exact either way).
    Prompt and prefix adapters get the ``task_type`` of the base model's class
    (peft's plain ``PeftModel`` would ignore them).
    """
    adapter = model._get(name)
    check_materialised(adapter, name)
    writers: dict[str, Callable] = {"lora": _lora_export, "ia3": _ia3_export, "prompt": _prompt_export,
                                    "prefix": _prompt_export, **peft_lora_family.WRITERS}
    if adapter.config.method not in writers:
        headed = "" if adapter.task_head is None else (
            " (with a head, as splice train's classification and tagging runs have: LoRA, DoRA, VeRA or IA3; train "
            "with splice train --method lora, dora, vera or ia3 for a run peft can read)")
        raise AdapterError(
            f"peft has no format for splice's {adapter.config.method!r} adapters; format='peft' writes LoRA, DoRA, "
            f"VeRA, IA3, prompt and prefix tuning{headed}. Save it with format='splice'."
        )
    head = task_head(model, adapter, name) if adapter.task_head is not None else None
    config, tensors = writers[adapter.config.method](model, adapter, head)
    head_path = model.anatomy.module_path(adapter.head_site.module) if adapter.head_site is not None else None
    saved = head.modules_to_save if head is not None else [head_path] if head_path is not None else None
    if head_path is not None:
        prefix = prompts.HEAD_PREFIX if config["peft_type"] in prompts.KINDS else PREFIX
        tensors.update({f"{prefix}{head_path}.{key}": t for key, t in adapter.head.state_dict().items()})
    if head is not None:
        tensors.update({f"{PREFIX}{path}": t for path, t in head.tensors.items()})
    config.update(
        modules_to_save=saved,
        task_type=head.task_type if head is not None else config.get("task_type"),
        base_model_name_or_path=getattr(getattr(model.base, "config", None), "_name_or_path", None) or None,
        inference_mode=True,
    )
    tensors = {key: t.detach().contiguous().cpu() for key, t in tensors.items()}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_FILES[0]), metadata={"format": "pt"})
        (staging / FOREIGN_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_folder(path, fill, marker=FOREIGN_CONFIG)


def _by_module(model: AdaptedModel, adapter: Adapter, head: TaskHead | None) -> dict[str, list[tuple[Site, Any]]]:
    """The adapter's deltas by the path of their module in the model peft loads: the base, or ``head``'s task
    model (where the base sits under a prefix)."""
    prefix = head.base_prefix if head is not None else ""
    grouped: dict[str, list[tuple[Site, Any]]] = {}
    for site, delta in adapter.items():
        grouped.setdefault(prefix + model.anatomy.module_path(site.module), []).append((site, delta))
    return grouped


def _rows(site: Site) -> torch.Tensor:
    """Indices of ``site``'s rows in its module's output."""
    return torch.arange(linear_shape(site.module)[1])[site.columns if site.columns is not None else slice(None)]


def _lora_export(model: AdaptedModel, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    config = adapter.config.plain()  # a PiSSA / OLoRA start: the plain LoRA of twice the rank it computes
    tensors, ranks, alphas = {}, {}, {}
    for path, items in _by_module(model, adapter, head).items():
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
                B.index_copy_(0, _rows(site), part)
        else:  # roles with their own A: stack the ranks, fold each role's scaling into its block of B
            A, rank = torch.cat(As), sum(a.shape[0] for a in As)
            alpha = math.sqrt(rank) if config.use_rslora else rank  # peft scaling 1
            B = torch.zeros(out_rows, rank, dtype=Bs[0].dtype)
            offset = 0
            for (site, delta), part in zip(items, Bs):
                B[:, offset:offset + part.shape[1]].index_copy_(0, _rows(site), part * delta.scaling)
                offset += part.shape[1]
        tensors[f"{PREFIX}{path}.lora_A.weight"] = A
        tensors[f"{PREFIX}{path}.lora_B.weight"] = B
        ranks[path], alphas[path] = rank, alpha
    targets, _ = _peft_names(model, head, set(ranks), set())
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
        "fan_in_fan_out": _has_conv1d(adapter),
        "init_lora_weights": True,
    }, tensors


def _ia3_export(model: AdaptedModel, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, inputs = {}, set()
    for path, items in _by_module(model, adapter, head).items():
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
                vector.index_copy_(0, _rows(part_site), part.scale.detach().cpu())
            tensors[f"{PREFIX}{path}.ia3_l"] = vector.reshape(-1, 1)
    paths = {key.removeprefix(PREFIX).removesuffix(".ia3_l") for key in tensors}
    targets, feedforward = _peft_names(model, head, paths, inputs)
    return {
        "peft_type": "IA3",
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": _has_conv1d(adapter),
    }, tensors


def _prompt_export(model: AdaptedModel, adapter: Adapter, head: None) -> tuple[dict, dict[str, torch.Tensor]]:
    """:func:`prompts.export`; ``head`` is None (:func:`.peft_heads.task_head` refuses prompts with a splice head)."""
    return prompts.export(model, adapter)


def _has_conv1d(adapter: Adapter) -> bool:
    return any(type(site.module).__name__ == "Conv1D" for site, _ in adapter.items())


def _peft_names(model: AdaptedModel, head: TaskHead | None, targets: set[str], inputs: set[str]) -> tuple[Any, Any]:
    """``target_modules`` (and IA3's ``feedforward_modules``) that make peft pick exactly these modules.

    The shortest module-name suffixes that do (``["q_proj", "v_proj"]``), as users
    write them; a full-match regular expression where no suffixes are exact. The
    paths are those of the model peft loads: the base, or ``head``'s task model.
    """
    prefix = head.base_prefix if head is not None else ""
    every = [prefix + name for name, _ in model.base.named_modules() if name] + list(head.modules if head else ())
    longest = max(len(path.split(".")) for path in targets)
    for depth in range(1, longest + 1):
        names = sorted({".".join(p.split(".")[-depth:]) for p in targets})
        feedforward = sorted({".".join(p.split(".")[-depth:]) for p in inputs})
        picked = {m for m in every if any(m == n or m.endswith("." + n) for n in names)}
        scaled = {m for m in targets if any(m.endswith(n) for n in feedforward)}  # peft's feedforward test
        if picked == targets and scaled == inputs:
            return names, feedforward
    return _full_match(targets), _full_match(inputs) if inputs else []


def _full_match(paths: set[str]) -> str:
    return "(" + "|".join(re.escape(p) for p in sorted(paths)) + ")"
