"""Anatomy: where the roles of a transformer live inside a Hugging Face model.

This is the only module that knows model internals. It finds the stack(s) of
transformer blocks and, in each block, the modules that play a *role*:

- projections ``q k v o`` (self-attention), ``cross_q cross_k cross_v cross_o``
  (T5 decoder cross-attention) and ``up gate down`` (feed-forward);
- sublayers ``attn``, ``cross_attn`` and ``ffn``: where the sublayer's input
  enters and where its output leaves, *before* the residual add.

Everything above this layer speaks in roles, never in module names. A role
resolves to one :class:`Site` per block. Fused projections (GPT-2 ``c_attn``,
GPT-NeoX ``query_key_value``, Phi-3 ``qkv_proj`` and ``gate_up_proj``) are
sites on the fused module restricted to the role's output columns, so
``LoRA(targets=["q", "v"])`` means the same thing on every architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Union

import torch
from torch import nn

from .errors import AnatomyError

PROJECTION_ROLES = ("q", "k", "v", "o", "up", "gate", "down", "cross_q", "cross_k", "cross_v", "cross_o")
SUBLAYER_ROLES = ("attn", "cross_attn", "ffn")
ALL_ROLES = PROJECTION_ROLES + SUBLAYER_ROLES

# A role spec is a dotted path inside a block ("self_attn.q_proj"), a path with a
# column split of a fused output ("attn.c_attn[qkv:0]"), for sublayers a pair
# (module receiving the sublayer input, module producing its pre-residual output),
# or a list of such alternatives, the first one present winning.
RoleSpec = Union[str, tuple, list]

HEAD_NAMES = ("classifier", "score", "qa_outputs", "lm_head", "embed_out")

_FUSED = re.compile(r"^(?P<path>[\w.]+)\[(?P<scheme>\w+):(?P<part>\d+)\]$")


@dataclass(frozen=True)
class Layout:
    """Where the blocks are (per stack) and where each role sits inside a block."""

    stacks: Mapping[str, str | tuple[str, ...]]  # stack name -> path suffix(es) of the ModuleList of blocks
    roles: Mapping[str, Mapping[str, RoleSpec]]  # stack name -> role -> spec
    final_norm: tuple[str, ...] = ()


def _bert_like(q: str, k: str, v: str, attn_in: str = "attention.self") -> dict:
    return {
        "q": q, "k": k, "v": v, "o": "attention.output.dense",
        "up": "intermediate.dense", "down": "output.dense",
        "attn": (attn_in, "attention.output.dense"),
        "ffn": ("intermediate", "output.dense"),
    }


_LLAMA_LIKE = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "up": "mlp.up_proj", "gate": "mlp.gate_proj", "down": "mlp.down_proj",
    "attn": "self_attn", "ffn": "mlp",
}


def _t5_stack(cross: bool) -> dict:
    ffn = "layer.2" if cross else "layer.1"
    roles = {
        "q": "layer.0.SelfAttention.q", "k": "layer.0.SelfAttention.k",
        "v": "layer.0.SelfAttention.v", "o": "layer.0.SelfAttention.o",
        "attn": "layer.0.SelfAttention",
        # Gated FFNs (T5 v1.1, flan) name the input projections wi_0 (gate) and wi_1 (up).
        "up": [f"{ffn}.DenseReluDense.wi", f"{ffn}.DenseReluDense.wi_1"],
        "gate": f"{ffn}.DenseReluDense.wi_0", "down": f"{ffn}.DenseReluDense.wo",
        "ffn": f"{ffn}.DenseReluDense",
    }
    if cross:
        roles.update({f"cross_{p}": f"layer.1.EncDecAttention.{p}" for p in "qkvo"})
        roles["cross_attn"] = "layer.1.EncDecAttention"
    return roles


def _single(blocks: str | tuple[str, ...], roles: dict, final_norm: tuple[str, ...] = ()) -> Layout:
    return Layout({"layers": blocks}, {"layers": roles}, final_norm)


_BERT = _single("encoder.layer", _bert_like("attention.self.query", "attention.self.key", "attention.self.value"))
_LLAMA = _single("layers", _LLAMA_LIKE, ("norm",))

LAYOUTS: dict[str, Layout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": _single("encoder.layer", _bert_like(
        "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj")),
    # transformers 5 flattened ViT; 4.x nests it BERT-style (alternatives: first present wins).
    "vit": _single(("layers", "encoder.layer"), {
        "q": ["attention.q_proj", "attention.attention.query"],
        "k": ["attention.k_proj", "attention.attention.key"],
        "v": ["attention.v_proj", "attention.attention.value"],
        "o": ["attention.o_proj", "attention.output.dense"],
        "up": ["mlp.fc1", "intermediate.dense"], "down": ["mlp.fc2", "output.dense"],
        "attn": "attention", "ffn": ["mlp", ("intermediate", "output.dense")],
    }, ("layernorm",)),
    "distilbert": _single("transformer.layer", {
        "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
        "up": "ffn.lin1", "down": "ffn.lin2", "attn": "attention", "ffn": "ffn",
    }),
    "gpt2": _single("h", {
        "q": "attn.c_attn[qkv:0]", "k": "attn.c_attn[qkv:1]", "v": "attn.c_attn[qkv:2]",
        "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj", "attn": "attn", "ffn": "mlp",
    }, ("ln_f",)),
    "gpt_neox": _single("layers", {
        "q": "attention.query_key_value[qkv_per_head:0]",
        "k": "attention.query_key_value[qkv_per_head:1]",
        "v": "attention.query_key_value[qkv_per_head:2]",
        "o": "attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h",
        "attn": "attention", "ffn": "mlp",
    }, ("final_layer_norm",)),
    "opt": _single("decoder.layers", {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
        "up": "fc1", "down": "fc2", "attn": "self_attn", "ffn": ("fc1", "fc2"),
    }, ("decoder.final_layer_norm",)),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": _single("layers", {
        "q": "self_attn.qkv_proj[qkv_gqa:0]", "k": "self_attn.qkv_proj[qkv_gqa:1]",
        "v": "self_attn.qkv_proj[qkv_gqa:2]", "o": "self_attn.o_proj",
        "gate": "mlp.gate_up_proj[halves:0]", "up": "mlp.gate_up_proj[halves:1]",
        "down": "mlp.down_proj", "attn": "self_attn", "ffn": "mlp",
    }, ("norm",)),
    "t5": Layout(
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        {"encoder": _t5_stack(cross=False), "decoder": _t5_stack(cross=True)},
        ("encoder.final_layer_norm", "decoder.final_layer_norm"),
    ),
}


@dataclass(frozen=True, eq=False)
class Site:
    """One role in one block: the module whose output a delta changes.

    ``key`` ("layers.3.q", "decoder.1.cross_attn") names the site in checkpoints.
    ``input_module`` is the module whose first input is the site's input (the
    same module for projections). ``columns`` restricts a fused projection to
    this role's share of the output features.
    """

    key: str
    stack: str
    layer: int
    role: str
    module: nn.Module
    input_module: nn.Module
    in_features: int
    out_features: int
    columns: slice | torch.Tensor | None = None

    @property
    def is_projection(self) -> bool:
        return self.role in PROJECTION_ROLES


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and Hugging Face's transposed ``Conv1D`` (GPT-2)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as an ``[out, in]`` view (writes go through)."""
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    return module.weight


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    out_features, in_features = linear_weight(module).shape
    return in_features, out_features


def config_value(config, *names: str, default=None):
    """First attribute of ``config`` among ``names`` that is set (configs disagree on names)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


class Anatomy:
    """The roles of one Hugging Face model, found once at attach time."""

    def __init__(self, model: nn.Module, roles: Mapping[str, RoleSpec] | None = None):
        self.model = model
        self.config = getattr(model, "config", None)
        self.model_type = str(getattr(self.config, "model_type", type(model).__name__.lower()))
        layout = LAYOUTS.get(self.model_type) or _detect_layout(model)
        self.layout = _apply_overrides(layout, roles or {})
        self.blocks: dict[str, list[tuple[str, nn.Module]]] = {
            stack: _find_blocks(model, suffix) for stack, suffix in self.layout.stacks.items()
        }
        if not any(self.blocks.values()):
            raise AnatomyError(
                f"Could not find the transformer blocks of this {type(model).__name__} "
                f"(model_type {self.model_type!r}). Name the ModuleList of blocks with "
                "splice.attach(model, roles={'blocks': 'path.to.layers', 'q': 'attn.q_proj', ...})."
            )
        self._sites: dict[str, list[Site]] = {}
        for role, spec in (roles or {}).items():
            if role != "blocks" and not self.sites(role):
                raise AnatomyError(
                    f"roles={{{role!r}: {spec!r}}} matches no module in any block. {self._block_listing()} "
                    "Paths are relative to one block."
                )

    # -- facts about the model ------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """The residual-stream width: from the config, else read off the projections."""
        value = config_value(self.config, "hidden_size", "d_model", "n_embd", "dim")
        if value is not None:
            return int(value)
        for role, side in (("q", "in_features"), ("up", "in_features"), ("o", "out_features"), ("down", "out_features")):
            if self.sites(role):
                return getattr(self.sites(role)[0], side)
        raise AnatomyError(
            "Cannot tell this model's hidden size: it has no config.hidden_size and splice finds no q, up, o or "
            "down projection to read it from. Map one with splice.attach(model, roles={'q': '<path in a block>'})."
        )

    @property
    def num_heads(self) -> int:
        value = config_value(self.config, "num_attention_heads", "num_heads", "n_head", "n_heads")
        if value is None:
            raise AnatomyError("This model's config does not say how many attention heads it has (num_attention_heads).")
        return int(value)

    @property
    def num_kv_heads(self) -> int:
        return int(config_value(self.config, "num_key_value_heads", default=self.num_heads))

    @property
    def head_dim(self) -> int:
        return int(config_value(self.config, "head_dim", default=self.hidden_size // self.num_heads))

    @property
    def num_layers(self) -> int:
        return sum(len(blocks) for blocks in self.blocks.values())

    def fingerprint(self) -> dict:
        """What an adapter checks before it loads into a model: the base's shape."""
        def known(read):
            try:
                return read()
            except AnatomyError:  # a model without an HF config may not say; the shapes still get checked
                return None

        return {
            "model_type": self.model_type,
            "hidden_size": known(lambda: self.hidden_size),
            "num_layers": self.num_layers,
            "num_heads": known(lambda: self.num_heads),
            "vocab_size": config_value(self.config, "vocab_size"),
        }

    # -- sites ------------------------------------------------------------------
    def available_roles(self) -> list[str]:
        return [role for role in ALL_ROLES if self.sites(role)]

    def sites(self, role: str) -> list[Site]:
        """Every site of ``role`` across all blocks (empty if the model lacks it)."""
        if role not in self._sites:
            found = []
            for stack, blocks in self.blocks.items():
                spec = self.layout.roles.get(stack, {}).get(role)
                if spec is None:
                    continue
                for index, (path, block) in enumerate(blocks):
                    site = self._resolve(stack, index, role, block, spec)
                    if site is not None:
                        found.append(site)
            self._sites[role] = found
        return self._sites[role]

    def require(self, role: str, layers: tuple[int, ...] | None = None) -> list[Site]:
        """Sites of ``role`` (optionally only in ``layers``), or a clear error naming what is missing."""
        if role not in ALL_ROLES:
            raise AnatomyError(f"Unknown role {role!r}. Roles are: {', '.join(ALL_ROLES)}.")
        sites = self.sites(role)
        if not sites:
            raise AnatomyError(
                f"model_type {self.model_type!r} has no module for role {role!r}. {self._block_listing()} "
                f"Map the role yourself: splice.attach(model, roles={{{role!r}: '<path inside a block>'}})."
            )
        if layers is not None:
            count = max(len(b) for b in self.blocks.values())
            bad = [i for i in layers if not 0 <= i < count]
            if bad:
                raise AnatomyError(f"layers {bad} do not exist: this model has layers 0..{count - 1} per stack.")
            sites = [site for site in sites if site.layer in layers]
        return sites

    def _block_listing(self) -> str:
        path, block = next(blocks for blocks in self.blocks.values() if blocks)[0]
        children = [name for name, _ in block.named_modules() if name]
        return f"The first block ({path}) contains: {', '.join(children)}."

    def linear_roles(self) -> list[str]:
        """Projection roles this model has: what ``"all-linear"`` expands to."""
        return [role for role in PROJECTION_ROLES if self.sites(role)]

    def final_norms(self) -> list[nn.Module]:
        return [m for path in self.layout.final_norm if (m := _get(self.model, path, suffix=True)) is not None]

    def head(self, path: str) -> nn.Module:
        """The prediction-head module at ``path`` ("auto": the usual classifier/score/lm_head name)."""
        if path == "auto":
            path = next((name for name in HEAD_NAMES if _get(self.model, name) is not None), "")
        module = _get(self.model, path) if path else None
        if module is None or module is self.model:
            children = [name for name, _ in self.model.named_children()]
            raise AnatomyError(
                f"No prediction head {path or 'auto'!r} in this {type(self.model).__name__}; its top-level "
                f"modules are {', '.join(children)}. Pass head='<one of them>' or load a model with a head "
                "(e.g. AutoModelForSequenceClassification)."
            )
        return module

    def module_path(self, module: nn.Module) -> str:
        for name, candidate in self.model.named_modules():
            if candidate is module:
                return name
        raise AnatomyError(f"{type(module).__name__} is not part of this model.")

    def _resolve(self, stack: str, index: int, role: str, block: nn.Module, spec: RoleSpec) -> Site | None:
        if isinstance(spec, list):
            return next((s for alt in spec if (s := self._resolve(stack, index, role, block, alt))), None)
        key = f"{stack}.{index}.{role}"
        if isinstance(spec, tuple):
            input_module, module = _get(block, spec[0]), _get(block, spec[1])
            if input_module is None or module is None:
                return None
            return Site(key, stack, index, role, module, input_module, self.hidden_size, self.hidden_size)
        fused = _FUSED.match(spec)
        module = _get(block, fused["path"] if fused else spec)
        if module is None:
            return None
        if role in SUBLAYER_ROLES:
            return Site(key, stack, index, role, module, module, self.hidden_size, self.hidden_size)
        if not is_linear(module):
            raise AnatomyError(
                f"Role {role!r} maps to {spec!r}, a {type(module).__name__}; projection roles must be "
                "nn.Linear (or HF Conv1D). Fix the mapping passed to splice.attach(roles=...)."
            )
        in_features, out_features = _linear_shape(module)
        columns = None
        if fused:
            columns = self._columns(fused["scheme"], int(fused["part"]), out_features)
            out_features = _column_count(columns)
        return Site(key, stack, index, role, module, module, in_features, out_features, columns)

    def _columns(self, scheme: str, part: int, total: int) -> slice | torch.Tensor:
        """Output columns of part ``part`` of a fused projection laid out by ``scheme``."""
        if scheme == "qkv":  # [q | k | v], equal thirds (GPT-2)
            third = total // 3
            return slice(part * third, (part + 1) * third)
        if scheme == "halves":  # [gate | up] (Phi-3)
            half = total // 2
            return slice(part * half, (part + 1) * half)
        if scheme == "qkv_gqa":  # [q: heads*hd | k: kv*hd | v: kv*hd] (Phi-3)
            q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            return [slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv)][part]
        if scheme == "qkv_per_head":  # per head [q | k | v] (GPT-NeoX)
            head = total // (3 * self.num_heads)
            starts = torch.arange(self.num_heads) * 3 * head + part * head
            return (starts[:, None] + torch.arange(head)[None, :]).reshape(-1)
        raise AnatomyError(f"Unknown fused-column scheme {scheme!r}; use qkv, halves, qkv_gqa or qkv_per_head.")


def _column_count(columns: slice | torch.Tensor) -> int:
    return columns.stop - columns.start if isinstance(columns, slice) else int(columns.numel())


def _get(root: nn.Module, path: str, suffix: bool = False) -> nn.Module | None:
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


def _find_blocks(model: nn.Module, suffixes: str | tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The blocks of the first ModuleList found at one of ``suffixes`` (under any wrapper prefix, e.g. ``bert.``)."""
    for suffix in (suffixes,) if isinstance(suffixes, str) else suffixes:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
                return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    return []


def _apply_overrides(layout: Layout, overrides: Mapping[str, RoleSpec]) -> Layout:
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
    return Layout(stacks, roles, layout.final_norm)


# -- structural detection for model types not in the table ------------------------
_NAME_PATTERNS = {
    "q": r"(q_proj|query|q_lin|wq|query_proj)",
    "k": r"(k_proj|key|k_lin|wk|key_proj)",
    "v": r"(v_proj|value|v_lin|wv|value_proj)",
    "o": r"(o_proj|out_proj|out_lin|wo_attn)",
    "up": r"(up_proj|fc1|c_fc|lin1|w1|dense_h_to_4h|fc_in)",
    "gate": r"(gate_proj|w3)",
    "down": r"(down_proj|fc2|lin2|w2|dense_4h_to_h|fc_out)",
}


def _detect_layout(model: nn.Module) -> Layout:
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
