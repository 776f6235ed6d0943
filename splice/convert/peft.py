"""peft's format: read a peft folder (LoRA, DoRA, VeRA, IA³, LoHa, LoKr, OFT, BOFT, prompt and prefix tuning;
the method families are in :mod:`.peft_lora`, :mod:`.peft_lora_family`, :mod:`.peft_products`, :mod:`.prompts`;
writing: :mod:`.peft_write`).

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

from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter import Adapter
from ..checkpoint import Contents, load_sequence
from ..errors import AnatomyError, CheckpointError
from ..file_names import PEFT_WEIGHTS
from . import peft_lora, peft_lora_family, peft_products, prompts
from .detect import FOREIGN_CONFIG, read_json
from .mapping import head_state
from .peft_format import PREFIX
from .weights import read_weights

if TYPE_CHECKING:
    from ..anatomy import Anatomy

def read_peft(anatomy: Anatomy, taken: Container[str], folder: Path, name: str | None = None) -> tuple[str, Adapter]:
    """The peft adapter in ``folder`` (LoRA, IA³, prompt or prefix tuning) for ``anatomy``: its name and adapter.

    Everything is checked (options, module names, shapes) before anything is built.
    """
    config = read_json(folder / FOREIGN_CONFIG)
    source = folder / FOREIGN_CONFIG
    readers: dict[str, Callable] = {"LORA": peft_lora.read_lora, "IA3": peft_lora.read_ia3, **peft_lora_family.READERS,
                                    **{kind: prompts.read for kind in prompts.KINDS}, **peft_products.READERS}
    kind = peft_lora_family.kind_of(config)
    if kind not in readers:
        raise CheckpointError(f"{source}: peft_type {kind!r} is not one splice reads; it reads {', '.join(readers)}.")
    try:
        if kind in prompts.KINDS:
            prompts.check_options(anatomy, config, source)
        elif kind in peft_products.READERS:
            peft_products.check_options(config, source)
        elif kind in peft_lora_family.READERS:
            peft_lora_family.check_options(config, source)
        else:
            peft_lora.check_options(config, source)
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
