"""Soft tokens: prompt and prefix tuning as rewrites of a model's calls, through hooks.

Prompt and prefix adapters add *positions* rather than change a sublayer's
output: the setup's programs say which (:meth:`splice.hooks.programs.Program.soft`,
per row under routing), and the handlers here put them into the calls the
hooks see. Each mechanism was chosen because it holds, exactly, on every
architecture of the anatomy table under transformers 4.57 and 5.x, using only
public call arguments:

- **Prompt** (site ``prompt``): before the prompt module (the model; T5: its
  encoder) runs, ``input_ids`` become ``inputs_embeds`` with the soft prompt in
  front; the mask, ``token_type_ids``, positions and token labels grow to match.
  After it runs, the soft positions are dropped from the outputs.
  With ``PromptTuning(insert="embedded")`` (site ``embedded_prompt``) the prompt goes
  in front of the embedding block's output instead: the model call only gets the
  grown mask and labels, the real tokens keep their ids, types and positions.
- **Prefix on a cached stack** (decoders, T5's decoder): before the model runs,
  a cache scoped to this call and pre-filled with every layer's prefix keys and
  values (``[B, kv_heads, S, head_dim]``, so grouped-query attention needs
  nothing special) is passed as the model's cache argument (``past_key_values``
  up to transformers 5.23, ``cache`` from 5.24: read from the model's signature,
  see :func:`splice.anatomy.calls.cache_argument`), with the mask grown by
  ``S`` slots and mask-derived position ids. Gradient checkpointing drops the
  cache inside each block; the self-attention module then gets a one-layer
  cache rebuilt from the parameters (so recomputation is idempotent).
- **Prefix elsewhere** (encoders): before a self-attention module runs, ``S``
  placeholder rows go in front of its hidden states and mask; the ``k`` and ``v``
  projections' outputs for those rows are replaced by the prefix; the rows are
  dropped from its output. Queries and keys keep one length, so every reshape
  and relative-position term of the model (DeBERTa, T5) works unchanged.
- **Generate**: the soft tokens are put in a cache up front, and ``generate`` gets
  ``S`` placeholder ids (plus the grown mask) standing for them, which it skips
  by the cache length; they are removed from the returned sequences. Passing
  only the real ids is silently wrong on transformers 4.57.

A call that already brings a cache (a decoding step) gets no soft tokens: they
were added when the cache was started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..anatomy import Anatomy, Site
from ..anatomy.calls import (
    cache_argument,
    extend_mask,
    given_cache,
    mask_follows_embeddings,
    positions_from_mask,
    prefix_cache,
    strip_positions,
    token_embedding,
    with_cache,
)
from ..errors import AdapterError, AnatomyError
from .programs import Program, Soft, first_input

PROMPT_KEY = "prompt"
EMBEDDED_KEY = "embedded_prompt"  # PromptTuning(insert="embedded"): after the embedding block
Handler = Callable[..., object]


class SoftTokens:
    """The call-level handlers of one model, run by its :class:`~splice.hooks.HookSet`.

    ``plan`` gives the plan the hooks dispatch to now (it changes with every setup): the handlers read their
    programs from it, and need nothing else of the hooks.
    """

    def __init__(self, anatomy: Anatomy, plan: Callable[[], Mapping[str, Program]]):
        self.anatomy, self._plan = anatomy, plan
        self.cache_name = cache_argument(anatomy.model)  # the keyword the model's forward and generate take
        self.before: dict[nn.Module, list[Handler]] = {}  # (args, kwargs) -> (args, kwargs) | None
        self.strip: dict[nn.Module, Handler] = {}  # output -> output, before the module's site deltas
        self.after: dict[nn.Module, list[Handler]] = {}  # (args, kwargs, output) -> output, after them
        self._cached: list[Site] = []  # prefix sites of cached stacks, in layer order
        self._rows: dict[str, tuple[Soft, torch.Tensor]] = {}  # encoder attention calls under way: prefix, input
        self._inserted: dict[nn.Module, tuple[int, int]] = {}  # prompt module -> (soft count, full length)
        self.injected = False  # this forward passed a prefix cache: rebuild it where checkpointing drops it
        self.prompt_module: nn.Module | None = None
        self._prompt_visible: torch.Tensor | None = None  # the soft prompt's slots, while its call runs
        self._embedded: Soft | None = None  # an embedded prompt waiting for the embedding block's output

    # -- installing ---------------------------------------------------------------------------
    def ensure(self, site: Site) -> list[nn.Module]:
        """Register the handlers ``site`` (role ``prompt`` or ``prefix``) needs; returns the modules to hook."""
        if site.role == PROMPT_KEY:
            modules = []
            if self.prompt_module is None:
                self.prompt_module = site.module
                self._add(self.before, site.module, self._prompt_call, first=True)  # before a prefix's slots go in
                self.strip[site.module] = self._prompt_strip
                modules.append(site.module)
            if site.input_module is not site.module and site.input_module not in self.after:
                self._add(self.after, site.input_module, self._embedded_output)
                modules.append(site.input_module)
            return modules
        if any(s.key == site.key for s in self._cached) or site.input_module in self.strip:
            return []
        if self.anatomy.cached(site.stack):
            model = self.anatomy.model
            if not self._cached:
                self._add(self.before, model, self._prefix_call)
            self._cached = sorted([*self._cached, site], key=lambda s: (s.stack, s.layer))
            name = cache_argument(site.input_module)  # GPT-NeoX's attention: layer_past
            self._add(self.before, site.input_module,
                      lambda args, kwargs: self._reinject(site, name, args, kwargs))
            return [model, site.input_module]
        self._add(self.before, site.input_module, lambda args, kwargs: self._rows_call(site, args, kwargs))
        self.strip[site.input_module] = lambda output: self._rows_strip(site, output)
        modules = [site.input_module]
        for index, role in enumerate(("k", "v")):
            projection = next(s for s in self.anatomy.sites(role) if s.stack == site.stack and s.layer == site.layer)
            if projection.columns is not None:
                raise AnatomyError(
                    f"Prefix tuning on {projection.key}: a fused key/value projection in a stack without a cache "
                    "is not supported. Map separate k and v projections with splice.attach(model, roles=...)."
                )
            self._add(self.after, projection.module,
                      lambda args, kwargs, y, index=index: self._rows_projection(site, index, args, kwargs, y))
            modules.append(projection.module)
        return modules

    @staticmethod
    def _add(table: dict, module: nn.Module, handler: Handler, first: bool = False) -> None:
        handlers = table.setdefault(module, [])
        handlers.insert(0, handler) if first else handlers.append(handler)

    def _program(self, key: str):
        program = self._plan().get(key)
        return program if program is not None and program.has_soft else None

    # -- prompt -------------------------------------------------------------------------------------
    def _prompt_call(self, args: tuple, kwargs: dict):
        program, embedded = self._program(PROMPT_KEY), self._program(EMBEDDED_KEY)
        self._embedded = None
        if program is not None and embedded is not None:
            raise AdapterError(
                "A setup cannot combine PromptTuning(insert='input') and PromptTuning(insert='embedded'): one puts "
                "its tokens before the embedding block, the other after it. Activate prompts of one kind."
            )
        if embedded is not None and not _continues(kwargs):
            return self._embedded_call(embedded, args, kwargs)
        if program is None or _continues(kwargs):
            return None
        module = self.prompt_module
        if args and isinstance(args[0], torch.Tensor) and "input_ids" not in kwargs:
            kwargs, args = {**kwargs, "input_ids": args[0]}, args[1:]
        kwargs = dict(kwargs)
        ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if ids is None:
                return None
            embeds = token_embedding(module)(ids)
        rows, length = embeds.shape[:2]
        soft = program.soft(rows)
        count, visible = soft.length, soft.visible.to(embeds.device)
        kwargs["inputs_embeds"] = torch.cat([soft.values[0].to(embeds.dtype), embeds], 1)
        mask = kwargs.get("attention_mask")
        mask = torch.ones(rows, length, dtype=torch.long, device=embeds.device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([visible.to(mask.dtype), mask], 1)
        if kwargs.get("token_type_ids") is not None:
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(rows, count), types], 1)
        self._set_positions(kwargs, visible, kwargs["attention_mask"], count + length, True, "soft prompts")
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape == (rows, length):
            if self.anatomy.causal:
                # The loss stays the one over the returned logits: the last soft position predicts nothing.
                labels = torch.cat([labels.new_full((rows, 1), -100), labels[:, 1:]], 1)
            kwargs["labels"] = torch.cat([labels.new_full((rows, count), -100), labels], 1)
        self._inserted[module] = (count, count + length)
        self._prompt_visible = visible
        return args, kwargs

    def _embedded_call(self, program, args: tuple, kwargs: dict):
        """Insert after the embedding block: the model call only gets the grown mask and labels."""
        source = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            (kwargs[n] for n in ("input_ids", "inputs_embeds") if isinstance(kwargs.get(n), torch.Tensor)), None)
        if source is None:
            return None
        rows, length, device = source.shape[0], source.shape[1], source.device
        soft = program.soft(rows)
        count, visible = soft.length, soft.visible.to(device)
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None and not mask_follows_embeddings(self.anatomy.model):
            raise AnatomyError(
                "PromptTuning(insert='embedded') with a padding mask needs transformers 5, or the model loaded "
                "with attn_implementation='eager' on transformers 4.x (4.x's SDPA path sizes the mask from the "
                "input ids, not from the embeddings the prompt joins)."
            )
        mask = torch.ones(rows, length, dtype=torch.long, device=device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([visible.to(mask.dtype), mask], 1)
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape == (rows, length):
            kwargs["labels"] = torch.cat([labels.new_full((rows, count), -100), labels], 1)
        self._inserted[self.prompt_module] = (count, count + length)
        self._prompt_visible = visible
        self._embedded = soft
        return args, kwargs

    def _embedded_output(self, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        soft, self._embedded = self._embedded, None
        if soft is None:
            return y
        return torch.cat([soft.values[0].to(device=y.device, dtype=y.dtype), y], 1)

    def _prompt_strip(self, output):
        inserted = self._inserted.pop(self.prompt_module, None)
        self._prompt_visible = None
        self._embedded = None
        return output if inserted is None else strip_positions(output, *inserted)

    def _set_positions(self, kwargs: dict, visible: torch.Tensor, mask: torch.Tensor, length: int,
                       in_sequence: bool, what: str) -> None:
        """Positions that skip masked slots, where the model takes them (rotary and learned ones need it).

        ``in_sequence``: the soft slots are part of this call's sequence (a prompt), not of its cache.
        """
        mode = self.anatomy.positions
        if mode == "explicit":
            given = kwargs.get("position_ids")
            if given is None:
                kwargs["position_ids"] = positions_from_mask(mask, length)
            else:  # the caller's positions, after the visible soft slots
                moved = given + visible.sum(1, keepdim=True)
                soft = positions_from_mask(visible, visible.shape[1])
                kwargs["position_ids"] = torch.cat([soft, moved], 1) if in_sequence else moved
        elif mode == "fixed" and not bool(visible.all()):
            raise AdapterError(
                f"Rows with {what} of different lengths cannot share a batch on model_type "
                f"{self.anatomy.model_type!r}: it numbers positions itself and cannot be told to skip the unused "
                "slots. Batch rows of equal prompt length together."
            )

    # -- prefix on cached stacks ------------------------------------------------------------------
    def _prefix_call(self, args: tuple, kwargs: dict):
        self.injected = False
        layers = [(site, program) for site in self._cached if (program := self._program(site.key)) is not None]
        if not layers or _continues(kwargs):
            return None
        rows, length, device = self._decoder_shape(args, kwargs)
        entries, visible = self._entries(layers, rows)
        kwargs = with_cache(kwargs, self.cache_name, prefix_cache(entries, self.anatomy.encoder_decoder))
        name = self.anatomy.layout.decoder_mask
        mask = kwargs.get(name)
        if mask is None and (not self.anatomy.encoder_decoder or not bool(visible.all())):
            mask = torch.ones(rows, length, dtype=torch.long, device=device)
        if mask is not None:
            kwargs[name] = torch.cat([visible.to(device=mask.device, dtype=mask.dtype), mask], 1)
            self._set_positions(kwargs, visible, kwargs[name], length, False, "prefixes")
        self.injected = True
        return args, kwargs

    def _entries(self, layers, rows: int):
        """Per-layer ``(layer, keys, values)`` in cache layout, and the slots each row uses."""
        entries, visible = [], None
        for site, program in layers:
            soft = program.soft(rows)
            entries.append((site.layer, *self._heads(soft)))
            visible = soft.visible if visible is None else visible  # one prefix length at every layer
        return entries, visible

    def _heads(self, soft: Soft) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, kv_heads * head_dim]`` keys and values as ``[B, kv_heads, S, head_dim]``."""
        head_dim = self.anatomy.head_dim
        return tuple(t.reshape(*t.shape[:2], -1, head_dim).transpose(1, 2) for t in soft.values)

    def _decoder_shape(self, args: tuple, kwargs: dict) -> tuple[int, int, torch.device]:
        for name in self.anatomy.layout.decoder_inputs:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                return value.shape[0], value.shape[1], value.device
        if args and isinstance(args[0], torch.Tensor) and not self.anatomy.encoder_decoder:
            return args[0].shape[0], args[0].shape[1], args[0].device
        raise AdapterError(
            f"A prefix adapter needs the decoder's inputs to size its slots: pass one of "
            f"{', '.join(self.anatomy.layout.decoder_inputs)} by keyword."
        )

    def _reinject(self, site: Site, name: str, args: tuple, kwargs: dict):
        """Gradient checkpointing sets the cache to None inside each block: give this layer its prefix.

        ``name``: the attention module's cache keyword, the one the checkpointed block set to None.
        """
        program = self._program(site.key)
        if not self.injected or program is None or given_cache(kwargs) is not None:
            return None
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        keys, values = self._heads(program.soft(rows))
        return args, with_cache(kwargs, name, prefix_cache([(site.layer, keys, values)], self.anatomy.encoder_decoder))

    # -- prefix on stacks without a cache (encoders): placeholder rows ----------------------------
    def _rows_call(self, site: Site, args: tuple, kwargs: dict):
        program = self._program(site.key)
        if program is None:
            return None
        spec = self.anatomy.attention_call
        args, kwargs = list(args), dict(kwargs)
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            kwargs[n] for n in spec.hidden if isinstance(kwargs.get(n), torch.Tensor))
        rows, length = hidden.shape[:2]
        soft = program.soft(rows)
        count = soft.length
        self._check_relative(soft)

        def pad(h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h.new_zeros(h.shape[0], count, *h.shape[2:]), h], 1)

        padded = []
        if args and isinstance(args[0], torch.Tensor):
            args[0] = pad(args[0])
            padded.append(args[0])
        for name in spec.hidden:
            if isinstance(kwargs.get(name), torch.Tensor):
                kwargs[name] = pad(kwargs[name])
                padded.append(kwargs[name])
        for where in spec.mask:
            if isinstance(where, int) and where < len(args):
                args[where] = extend_mask(args[where], soft.visible, queries=True)
                break
            if isinstance(where, str) and where in kwargs:
                kwargs[where] = extend_mask(kwargs[where], soft.visible, queries=True)
                break
        for name in spec.rebuilt:
            if name in kwargs:
                kwargs[name] = None
        for name in spec.positions:
            if kwargs.get(name) is not None:
                kwargs[name] = torch.arange(count + length, device=kwargs[name].device)
        self._rows[site.key] = (soft, padded)
        return tuple(args), kwargs

    def _check_relative(self, soft: Soft) -> None:
        """Relative positions see unused prompt slots between a row's prefix and its tokens: refuse that mix."""
        prompt = self._prompt_visible
        if self.anatomy.positions != "relative" or prompt is None or prompt.shape[0] != soft.visible.shape[0]:
            return
        if bool((soft.visible.any(1) & ~prompt.all(1)).any()):
            raise AdapterError(
                f"On model_type {self.anatomy.model_type!r} (relative positions) a row with a prefix cannot share a "
                "batch with rows of a longer soft prompt: the unused prompt slots would sit between its prefix and "
                "its tokens. Batch those rows separately."
            )

    def _rows_projection(self, site: Site, index: int, args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        entry = self._rows.get(site.key)
        # Only the projection of the padded hidden states (DeBERTa also projects its position embeddings).
        if entry is None or not any(first_input(args, kwargs) is h for h in entry[1]):
            return y
        soft = entry[0]
        return torch.cat([soft.values[index].to(y.dtype), y[:, soft.length:]], 1)

    def _rows_strip(self, site: Site, output):
        soft = self._rows.pop(site.key, (None,))[0]
        if soft is None:
            return output
        if isinstance(output, tuple):
            return (output[0][:, soft.length:], *output[1:])
        return output[:, soft.length:]

    # -- generate ---------------------------------------------------------------------------------
    def generate(self, base: nn.Module, args: tuple, kwargs: dict):
        """``base.generate`` with the setup's soft tokens in a cache up front, stood for by placeholders."""
        layers = [(site, program) for site in self._cached if (program := self._program(site.key)) is not None]
        prompt = self._program(PROMPT_KEY) if self.prompt_module is base else None
        if not layers and prompt is None:
            return base.generate(*args, **kwargs)
        if args and isinstance(args[0], torch.Tensor):
            kwargs, args = {**kwargs, "input_ids": args[0]}, args[1:]
        if self.anatomy.encoder_decoder:
            return self._generate_seq2seq(base, layers, args, kwargs)
        ids = kwargs.pop("input_ids", None)
        if ids is None:
            raise AdapterError("generate() with a prompt or prefix adapter needs input_ids.")
        rows, device = ids.shape[0], ids.device
        mask = kwargs.pop("attention_mask", None)
        mask = torch.ones_like(ids) if mask is None else mask
        from transformers import DynamicCache

        cache, visible = DynamicCache(), torch.zeros(rows, 0, dtype=torch.bool, device=device)
        with torch.no_grad():
            if layers:
                entries, visible = self._entries(layers, rows)
                cache = prefix_cache(entries, False)
            if prompt is not None:  # run the soft prompt once: its keys and values join the cache
                soft = prompt.soft(rows)
                visible = torch.cat([visible, soft.visible.to(device)], 1)
                call = {"inputs_embeds": soft.values[0], "attention_mask": visible.long(),
                        self.cache_name: cache, "use_cache": True}
                self._set_positions(call, visible, visible, soft.length, True, "soft prompts")
                base(**call)  # appends to ``cache`` in place (every release's Cache.update does)
        _expand(cache, base, kwargs)
        count = visible.shape[1]
        pad = kwargs.get("pad_token_id", getattr(base.generation_config, "pad_token_id", None))
        placeholders = torch.full((rows, count), 0 if pad is None else int(pad), dtype=ids.dtype, device=device)
        out = base.generate(*args, input_ids=torch.cat([placeholders, ids], 1),
                            attention_mask=torch.cat([visible.to(mask.dtype), mask], 1),
                            **{self.cache_name: cache}, **kwargs)
        return _drop_columns(out, count)

    def _generate_seq2seq(self, base: nn.Module, layers, args: tuple, kwargs: dict):
        """Encoder-decoder: the encoder's soft tokens work inside generate; the decoder's prefix needs placeholders."""
        if not layers:
            return base.generate(*args, **kwargs)
        source = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        rows, device = source.shape[0], source.device
        start = base.generation_config.decoder_start_token_id
        start = base.config.decoder_start_token_id if start is None else start
        decoder = kwargs.pop("decoder_input_ids", None)
        decoder = torch.full((rows, 1), int(start), dtype=torch.long, device=device) if decoder is None else decoder
        with torch.no_grad():
            entries, visible = self._entries(layers, rows)
        count = visible.shape[1]
        decoder_mask = kwargs.pop("decoder_attention_mask", None)
        decoder_mask = torch.ones_like(decoder) if decoder_mask is None else decoder_mask
        cache = prefix_cache(entries, True)
        _expand(cache, base, kwargs)
        out = base.generate(
            *args, **kwargs,
            decoder_input_ids=torch.cat([decoder.new_full((rows, count), int(start)), decoder], 1),
            decoder_attention_mask=torch.cat([visible.to(decoder_mask.dtype), decoder_mask], 1),
            **{self.cache_name: cache},
        )
        return _drop_columns(out, count)


def _continues(kwargs: dict) -> bool:
    """A call that brings a cache continues a sequence whose soft tokens are already in it.

    ``generate`` passes its cache as ``past_key_values`` up to transformers 5.23 and as ``cache`` from 5.24;
    a caller may use either name on 5.24+.
    """
    return given_cache(kwargs) is not None


def _expand(cache, base: nn.Module, kwargs: dict) -> None:
    """Repeat the cache's rows as ``generate`` repeats the inputs' (one per beam, or per returned sequence)."""
    config = kwargs.get("generation_config") or base.generation_config
    beams = kwargs.get("num_beams", config.num_beams) or 1
    copies = beams if beams > 1 else kwargs.get("num_return_sequences", config.num_return_sequences) or 1
    if copies > 1:
        cache.batch_repeat_interleave(copies)


def _drop_columns(out, count: int):
    """Generated sequences without the ``count`` placeholder columns in front."""
    if isinstance(out, torch.Tensor):
        return out[:, count:]
    out.sequences = out.sequences[:, count:]
    return out
