"""peft's format, written: LoRA, IA³, prompt and prefix tuning for ``peft.PeftModel.from_pretrained``.

The reverse of :mod:`.peft`: tensors named ``base_model.model.<module path>.lora_A.weight`` / ``….ia3_l``,
a fused module's sites joined into one peft LoRA, and a head as ``modules_to_save``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..adapter import Adapter
from ..anatomy import Anatomy
from ..checkpoint import check_materialised
from ..errors import AdapterError
from ..file_names import FOREIGN_CONFIG, PEFT_WEIGHTS
from ..folders import write_folder
from . import peft_lora, peft_lora_family, peft_products, prompts
from .peft_format import PREFIX
from .peft_heads import task_head


def write_peft(anatomy: Anatomy, adapter: Adapter, name: str, path: str | Path) -> Path:
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
    check_materialised(adapter, name)
    writers: dict[str, Callable] = {"lora": peft_lora.export_lora, "ia3": peft_lora.export_ia3,
                                    "prompt": _prompt_export, "prefix": _prompt_export,
                                    **peft_lora_family.WRITERS, **peft_products.WRITERS}
    if adapter.config.method not in writers:
        headed = "" if adapter.task_head is None else (
            " (with a head, as splice train's classification and tagging runs have: LoRA, DoRA, VeRA or IA3; train "
            "with splice train --method lora, dora, vera or ia3 for a run peft can read)")
        raise AdapterError(
            f"peft has no format for splice's {adapter.config.method!r} adapters; format='peft' writes LoRA, DoRA, "
            f"VeRA, IA3, LoHa, LoKr, OFT, BOFT, prompt and prefix tuning{headed}. Save it with format='splice'."
        )
    head = task_head(anatomy, adapter, name) if adapter.task_head is not None else None
    config, tensors = writers[adapter.config.method](anatomy, adapter, head)
    head_path = anatomy.module_path(adapter.head_site.module) if adapter.head_site is not None else None
    saved = head.modules_to_save if head is not None else [head_path] if head_path is not None else None
    if head_path is not None:
        prefix = prompts.HEAD_PREFIX if config["peft_type"] in prompts.KINDS else PREFIX
        tensors.update({f"{prefix}{head_path}.{key}": t for key, t in adapter.head.state_dict().items()})
    if head is not None:
        tensors.update({f"{PREFIX}{path}": t for path, t in head.tensors.items()})
    config.update(
        modules_to_save=saved,
        task_type=head.task_type if head is not None else config.get("task_type"),
        base_model_name_or_path=getattr(getattr(anatomy.model, "config", None), "_name_or_path", None) or None,
        inference_mode=True,
    )
    tensors = {key: t.detach().contiguous().cpu() for key, t in tensors.items()}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / PEFT_WEIGHTS[0]), metadata={"format": "pt"})
        (staging / FOREIGN_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_folder(path, fill, marker=FOREIGN_CONFIG)


def _prompt_export(anatomy: Anatomy, adapter: Adapter, head: None) -> tuple[dict, dict[str, torch.Tensor]]:
    """:func:`prompts.export`; ``head`` is None (:func:`.peft_heads.task_head` refuses prompts with a splice head)."""
    return prompts.export(anatomy, adapter)


