"""peft's format, written: LoRA, IA³, prompt and prefix tuning for ``peft.PeftModel.from_pretrained``.

The reverse of :mod:`.peft`: tensors named ``base_model.model.<module path>.lora_A.weight`` / ``….ia3_l``,
a fused module's sites joined into one peft LoRA, and a head as ``modules_to_save``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..adapter import Adapter
from ..anatomy import Anatomy
from ..anatomy.linear import linear_shape
from ..checkpoint import check_materialised
from ..errors import AdapterError
from ..file_names import FOREIGN_CONFIG, PEFT_WEIGHTS
from ..folders import write_folder
from . import peft_products, prompts
from .peft_format import PREFIX, by_module, has_conv1d, peft_names, rows
from .peft_heads import TaskHead, task_head


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
    writers: dict[str, Callable] = {"lora": _lora_export, "ia3": _ia3_export, "prompt": _prompt_export,
                                    "prefix": _prompt_export, **peft_products.WRITERS}
    if adapter.config.method not in writers:
        headed = "" if adapter.task_head is None else (
            " (with a head, as splice train's classification and tagging runs have: LoRA or IA3; train with "
            "splice train --method lora or --method ia3 for a run peft can read)")
        raise AdapterError(
            f"peft has no format for splice's {adapter.config.method!r} adapters; format='peft' writes LoRA, IA3, "
            f"LoHa, LoKr, OFT, BOFT, prompt and prefix tuning{headed}. Save it with format='splice'."
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


def _lora_export(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
    config = adapter.config
    tensors, ranks, alphas = {}, {}, {}
    for path, items in by_module(anatomy, adapter, head).items():
        sites = [site for site, _ in items]
        out_rows = linear_shape(sites[0].module)[1]
        As = [delta.lora_A.weight.detach().cpu() for _, delta in items]
        Bs = [delta.lora_B.weight.detach().cpu() for _, delta in items]
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


def _ia3_export(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> tuple[dict, dict[str, torch.Tensor]]:
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


def _prompt_export(anatomy: Anatomy, adapter: Adapter, head: None) -> tuple[dict, dict[str, torch.Tensor]]:
    """:func:`prompts.export`; ``head`` is None (:func:`.peft_heads.task_head` refuses prompts with a splice head)."""
    return prompts.export(anatomy, adapter)


