"""Finding blocks and roles in a model: by the table, by a user's overrides, or by structure."""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from torch import nn

from ..errors import AnatomyError
from .layouts import ALL_ROLES, Layout, RoleSpec
from .linear import is_linear


def get_module(root: nn.Module, path: str, suffix: bool = False) -> nn.Module | None:
    """Submodule at ``path`` (or, with ``suffix``, at any path ending with it), else None."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        pass
    if suffix:
        for name, module in root.named_modules():
            if name.endswith("." + path):
                return module
    return None


def find_blocks(model: nn.Module, suffixes: str | tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The blocks of the first ModuleList found at one of ``suffixes`` (under any wrapper prefix, e.g. ``bert.``)."""
    for suffix in (suffixes,) if isinstance(suffixes, str) else suffixes:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
                return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    return []


def apply_overrides(layout: Layout, overrides: Mapping[str, RoleSpec]) -> Layout:
    """A user's ``roles={...}`` mapping wins over the table and over detection."""
    if not overrides:
        return layout
    overrides = dict(overrides)
    unknown = set(overrides) - set(ALL_ROLES) - {"blocks"}
    if unknown:
        raise AnatomyError(
            f"Unknown role(s) {sorted(unknown)} in roles=...; valid keys are 'blocks' and {', '.join(ALL_ROLES)}."
        )
    stacks = dict(layout.stacks)
    if "blocks" in overrides:
        blocks = overrides.pop("blocks")
        paths = [blocks] if isinstance(blocks, str) else list(blocks)
        stacks = {"layers": paths[0]} if len(paths) == 1 else {f"stack{i}": p for i, p in enumerate(paths)}
    roles = {stack: {**layout.roles.get(stack, next(iter(layout.roles.values()), {})), **overrides}
             for stack in stacks}
    return dataclasses.replace(layout, stacks=stacks, roles=roles)


_NAME_PATTERNS = {
    "q": r"(q_proj|query|q_lin|wq|query_proj)",
    "k": r"(k_proj|key|k_lin|wk|key_proj)",
    "v": r"(v_proj|value|v_lin|wv|value_proj)",
    "o": r"(o_proj|out_proj|out_lin|wo_attn)",
    "up": r"(up_proj|fc1|c_fc|lin1|w1|dense_h_to_4h|fc_in)",
    "gate": r"(gate_proj|w3)",
    "down": r"(down_proj|fc2|lin2|w2|dense_4h_to_h|fc_out)",
}


def detect_layout(model: nn.Module) -> Layout:
    """Guess the blocks (largest ModuleList of identical blocks) and roles (by common names)."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size and any(is_linear(m) for m in module.modules()):
            best, best_size = name, size
    if best is None:
        return Layout({}, {})
    block = model.get_submodule(best)[0]
    names = [name for name, m in block.named_modules() if is_linear(m)]
    roles: dict[str, RoleSpec] = {}
    for role, pattern in _NAME_PATTERNS.items():
        match = next((n for n in names if re.search(rf"(^|\.){pattern}$", n)), None)
        if match:
            roles[role] = match
    for sublayer, members in (("attn", ("q", "o")), ("ffn", ("up", "down"))):
        parents = {roles[m].rpartition(".")[0] for m in members if m in roles}
        if len(parents) == 1 and (parent := parents.pop()):
            roles[sublayer] = parent
        elif sublayer == "ffn" and "up" in roles and "down" in roles:
            roles[sublayer] = (roles["up"], roles["down"])
    return Layout({"layers": best}, {"layers": roles})
