"""Resolving roles to sites in one model.

:class:`Anatomy` finds the stack(s) of transformer blocks and, in each block, the modules that play a *role*:

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

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import AnatomyError
from .calls import AttentionCall, token_embedding
from .detect import apply_overrides, detect_layout, find_blocks, get_module
from .layouts import ALL_ROLES, FUSED, HEAD_NAMES, LAYOUTS, PROJECTION_ROLES, SUBLAYER_ROLES, RoleSpec
from .linear import is_linear, linear_shape


def site_key(stack: str, layer: int, role: str) -> str:
    """The name of a block's site in plans and checkpoints: ``"layers.3.q"``. Model-level sites have
    one-word keys (``"prompt"``, ``"head"``)."""
    return f"{stack}.{layer}.{role}"


def layer_of(key: str) -> int:
    """The block index in a site key (``"layers.3.q"`` -> 3); -1 for model-level keys (``"head"``, ``"prompt"``)."""
    parts = key.split(".")
    return int(parts[1]) if len(parts) == 3 else -1


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
    norm: nn.Module | None = None  # residual roles on post-LN models: the norm the block applies to output + residual
    # What the delta reads from ``input_module``'s call, given (args, kwargs), where that is not the hidden states
    # (ReFT: the attention mask of the model's call); kept for the whole forward, so checkpointing recomputes with it.
    reads: Callable[[tuple, dict], torch.Tensor] | None = None

    @property
    def is_projection(self) -> bool:
        return self.role in PROJECTION_ROLES


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
        layout = LAYOUTS.get(self.model_type) or detect_layout(model)
        self.layout = apply_overrides(layout, roles or {})
        self.blocks: dict[str, list[tuple[str, nn.Module]]] = {
            stack: find_blocks(model, suffix) for stack, suffix in self.layout.stacks.items()
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
        readings = (("q", "in_features"), ("up", "in_features"), ("o", "out_features"), ("down", "out_features"))
        for role, side in readings:
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
            raise AnatomyError("This model's config does not say how many attention heads it has "
                               "(num_attention_heads).")
        return int(value)

    @property
    def num_kv_heads(self) -> int:
        return int(config_value(self.config, "num_key_value_heads", default=self.num_heads))

    @property
    def head_dim(self) -> int:
        return int(config_value(self.config, "head_dim", "d_kv", default=self.hidden_size // self.num_heads))

    @property
    def causal(self) -> bool:
        """Decoder-only (each position attends to earlier ones): from the table, else the config."""
        if self.layout.causal:
            return True
        config = self.config
        return bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or ()))

    # -- how the model is called (prompt and prefix tuning) -------------------------------
    @property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))

    @property
    def attention_call(self) -> AttentionCall:
        return self.layout.attention

    @property
    def positions(self) -> str:
        """How position ids follow the mask (see ``Layout.positions``); decoders found by structure: explicit."""
        return "explicit" if self.layout.positions == "fixed" and self.causal else self.layout.positions

    def cached(self, stack: str) -> bool:
        """Whether ``stack`` runs with a key/value cache (decoder self-attention)."""
        return stack in (self.layout.cached_stacks or (tuple(self.blocks) if self.causal else ()))

    def prompt_module(self) -> nn.Module:
        """The module whose ``input_ids`` a soft prompt is prepended to (T5: the encoder stack)."""
        module = get_module(self.model, self.layout.prompt_module) if self.layout.prompt_module else self.model
        if module is None or token_embedding(module) is None:
            raise AnatomyError(
                f"This {type(self.model).__name__} (model_type {self.model_type!r}) takes no token ids, so there is "
                "nothing to prepend a soft prompt to. Prompt tuning needs a text model (input_ids); use "
                "splice.PrefixTuning or another method here."
            )
        return module

    def prompt_site(self, embedded: bool = False) -> Site:
        """Where a soft prompt goes in: the prompt module's call (a model-level site, ``key`` "prompt").

        ``embedded``: after the embedding block instead (``key`` "embedded_prompt"; its ``input_module``
        is that block, whose output the prompt is put in front of).
        """
        module = self.prompt_module()
        width = token_embedding(module).embedding_dim
        if not embedded:
            return Site("prompt", "model", -1, "prompt", module, module, width, width)
        block = get_module(self.model, self.layout.embeddings, suffix=True) if self.layout.embeddings else None
        if block is None or self.layout.prompt_module:
            known = sorted(t for t, layout in LAYOUTS.items() if layout.embeddings)
            raise AnatomyError(
                f"PromptTuning(insert='embedded') puts the prompt after the model's embedding block, which splice "
                f"knows only for model_type {', '.join(known)}; not for {self.model_type!r}. "
                "Use insert='input' (the prompt in front of the token embeddings) here."
            )
        return Site("embedded_prompt", "model", -1, "prompt", module, block, width, width)

    def prefix_sites(self) -> list[Site]:
        """One site per self-attention block (``key`` "layers.3.prefix"): where prefix keys and values go in.

        ``in_features`` / ``out_features`` are the widths of the block's keys / values.
        """
        found = []
        for attn in self.sites("attn"):
            k, v = (next((s for s in self.sites(role) if s.stack == attn.stack and s.layer == attn.layer), None)
                    for role in ("k", "v"))
            if k is not None and v is not None:
                found.append(Site(f"{attn.stack}.{attn.layer}.prefix", attn.stack, attn.layer, "prefix",
                                  attn.module, attn.input_module, k.out_features, v.out_features))
        if not found:
            raise AnatomyError(
                f"Prefix tuning needs self-attention blocks with key and value projections; splice finds none in "
                f"model_type {self.model_type!r}. {self._block_listing()} Map them with "
                "splice.attach(model, roles={'attn': '<attention module>', 'k': '...', 'v': '...'})."
            )
        return found

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
    def sites(self, role: str) -> list[Site]:
        """Every site of ``role`` across all blocks (empty if the model lacks it)."""
        if role not in self._sites:
            found = []
            for stack, blocks in self.blocks.items():
                spec = self.layout.roles.get(stack, {}).get(role)
                if spec is None:
                    continue
                for index, (_path, block) in enumerate(blocks):
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

    def head(self, path: str) -> nn.Module:
        """The prediction-head module at ``path`` ("auto": the usual classifier/score/lm_head name)."""
        if path == "auto":
            path = next((name for name in HEAD_NAMES if get_module(self.model, name) is not None), "")
        module = get_module(self.model, path) if path else None
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
        key = site_key(stack, index, role)
        if isinstance(spec, tuple):
            input_module, module = get_module(block, spec[0]), get_module(block, spec[1])
            norm = get_module(block, spec[2]) if len(spec) > 2 and spec[2] else None
            if input_module is None or module is None or (len(spec) > 2 and spec[2] and norm is None):
                return None
            return Site(key, stack, index, role, module, input_module, self.hidden_size, self.hidden_size, norm=norm)
        fused = FUSED.match(spec)
        module = get_module(block, fused["path"] if fused else spec)
        if module is None:
            return None
        if role in SUBLAYER_ROLES:
            return Site(key, stack, index, role, module, module, self.hidden_size, self.hidden_size)
        if not is_linear(module):
            raise AnatomyError(
                f"Role {role!r} maps to {spec!r}, a {type(module).__name__}; projection roles must be "
                "nn.Linear (or HF Conv1D). Fix the mapping passed to splice.attach(roles=...)."
            )
        in_features, out_features = linear_shape(module)
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
            # The index is cached with the site and moved to each output's device when used: made on the CPU
            # even while a load builds an adapter on the meta device to check its shapes.
            head = total // (3 * self.num_heads)
            starts = torch.arange(self.num_heads, device="cpu") * 3 * head + part * head
            return (starts[:, None] + torch.arange(head, device="cpu")[None, :]).reshape(-1)
        raise AnatomyError(f"Unknown fused-column scheme {scheme!r}; use qkv, halves, qkv_gqa or qkv_per_head.")


def _column_count(columns: slice | torch.Tensor) -> int:
    return columns.stop - columns.start if isinstance(columns, slice) else int(columns.numel())
