"""peft's format: read LoRA, IA³, prompt and prefix tuning (writing them: :mod:`.peft_write`).

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

import re
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapter import Adapter
from ..anatomy import Site
from ..checkpoint import Contents, load_sequence
from ..errors import AnatomyError, CheckpointError
from ..file_names import PEFT_WEIGHTS
from . import peft_products, prompts
from .detect import FOREIGN_CONFIG, read_json
from .mapping import LoRAPiece, SiteIndex, head_state, ia3_from_vectors, lora_from_pieces, rows_of
from .options import UNSET, refuse_unknown
from .peft_format import INERT, PREFIX
from .weights import read_weights

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


def read_peft(anatomy: Anatomy, taken: Container[str], folder: Path, name: str | None = None) -> tuple[str, Adapter]:
    """The peft adapter in ``folder`` (LoRA, IA³, prompt or prefix tuning) for ``anatomy``: its name and adapter.

    Everything is checked (options, module names, shapes) before anything is built.
    """
    config = read_json(folder / FOREIGN_CONFIG)
    source = folder / FOREIGN_CONFIG
    readers: dict[str, Callable] = {"LORA": _read_lora, "IA3": _read_ia3,
                                    **{kind: prompts.read for kind in prompts.KINDS}, **peft_products.READERS}
    kind = config.get("peft_type")
    if kind not in readers:
        raise CheckpointError(f"{source}: peft_type {kind!r} is not one splice reads; it reads {', '.join(readers)}.")
    try:
        if kind in prompts.KINDS:
            prompts.check_options(anatomy, config, source)
        elif kind in peft_products.READERS:
            peft_products.check_options(config, source)
        else:
            _check_options(config, source)
    except AnatomyError as error:  # e.g. a prompt for a model that takes no token ids
        raise CheckpointError(f"The adapter in {folder} does not fit this model: {error}") from error

    def read() -> Contents:
        weights_path, tensors = read_weights(folder, PEFT_WEIGHTS)
        if kind not in prompts.KINDS:
            tensors = {key.removeprefix(PREFIX): tensor for key, tensor in tensors.items()}
        try:
            method, state, rest = readers[kind](anatomy, config, tensors, weights_path)
        except AnatomyError as error:
            raise CheckpointError(f"The adapter in {folder} does not fit this model: {error}") from error
        head, head_tensors = _head(anatomy, config, rest, weights_path)
        return Contents.of(method, head, {**state, **head_tensors}, weights_path)

    return load_sequence(anatomy, taken, folder, name or folder.name, {}, read)


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
    refuse_unknown(config, source, f"peft {config.get('peft_type')}", INERT | _READ, _WHAT, off=UNSET)


def _read_lora(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
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


def _read_ia3(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
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


def _head(anatomy: Anatomy, config: dict, rest: dict[str, torch.Tensor], source: Path):
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
    return head_state((name for name, _ in anatomy.model.named_modules()), module, params, source)
