"""Soft tokens: prompt and prefix tuning as rewrites of a model's calls, through hooks.

Prompt and prefix adapters add *positions* rather than change a sublayer's
output: the setup's programs say which (:meth:`splice.hooks.programs.Program.soft`,
per row under routing), and the handlers here put them into the calls the
hooks see, one module per mechanism. Each mechanism was chosen because it holds,
exactly, on every architecture of the anatomy table under transformers 4.57 and
5.x, using only public call arguments:

- **Prompt** (:mod:`.prompt`, site ``prompt``): before the prompt module (the model; T5: its
  encoder) runs, ``input_ids`` become ``inputs_embeds`` with the soft prompt in
  front; the mask, ``token_type_ids``, positions and token labels grow to match.
  After it runs, the soft positions are dropped from the outputs.
  With ``PromptTuning(insert="embedded")`` (site ``embedded_prompt``) the prompt goes
  in front of the embedding block's output instead: the model call only gets the
  grown mask and labels, the real tokens keep their ids, types and positions.
- **Prefix on a cached stack** (:mod:`.cached_prefix`: decoders, T5's decoder): before the model runs,
  a cache scoped to this call and pre-filled with every layer's prefix keys and
  values (``[B, kv_heads, S, head_dim]``, so grouped-query attention needs
  nothing special) is passed as the model's cache argument (``past_key_values``
  up to transformers 5.23, ``cache`` from 5.24: read from the model's signature,
  see :func:`splice.anatomy.calls.cache_argument`), with the mask grown by
  ``S`` slots and mask-derived position ids. Gradient checkpointing drops the
  cache inside each block; the self-attention module then gets a one-layer
  cache rebuilt from the parameters (so recomputation is idempotent).
- **Prefix elsewhere** (:mod:`.rows_prefix`: encoders): before a self-attention module runs, ``S``
  placeholder rows go in front of its hidden states and mask; the ``k`` and ``v``
  projections' outputs for those rows are replaced by the prefix; the rows are
  dropped from its output. Queries and keys keep one length, so every reshape
  and relative-position term of the model (DeBERTa, T5) works unchanged.
- **Generate** (:mod:`.generate`): the soft tokens are put in a cache up front, and ``generate`` gets
  ``S`` placeholder ids (plus the grown mask) standing for them, which it skips
  by the cache length; they are removed from the returned sequences. Passing
  only the real ids is silently wrong on transformers 4.57.

A call that already brings a cache (a decoding step) gets no soft tokens: they
were added when the cache was started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from ...anatomy import Anatomy, Site
from ...anatomy.calls import cache_argument
from ...errors import AnatomyError
from ..programs import Program
from .cached_prefix import CachedPrefix
from .calls import PROMPT_KEY
from .generate import Generate
from .prompt import Prompt
from .rows_prefix import RowsPrefix

Handler = Callable[..., object]


class SoftTokens:
    """The call-level handlers of one model, run by its :class:`~splice.hooks.HookSet`.

    ``plan`` gives the plan the hooks dispatch to now (it changes with every setup): the handlers read their
    programs from it, and need nothing else of the hooks.
    """

    def __init__(self, anatomy: Anatomy, plan: Callable[[], Mapping[str, Program]]):
        self.anatomy, self._plan = anatomy, plan
        self.before: dict[nn.Module, list[Handler]] = {}  # (args, kwargs) -> (args, kwargs) | None
        self.strip: dict[nn.Module, Handler] = {}  # output -> output, before the module's site deltas
        self.after: dict[nn.Module, list[Handler]] = {}  # (args, kwargs, output) -> output, after them
        self.prompt: Prompt | None = None
        # the keyword the model's forward and generate take for a cache
        self.cached = CachedPrefix(anatomy, cache_argument(anatomy.model), self._program)
        self.rows = RowsPrefix(anatomy, self._program, lambda: self.prompt.visible if self.prompt else None)
        self.generate = Generate(anatomy, self._program, self.cached, lambda: self.prompt)

    def _program(self, key: str) -> Program | None:
        program = self._plan().get(key)
        return program if program is not None and program.has_soft else None

    def ensure(self, site: Site) -> list[nn.Module]:
        """Register the handlers ``site`` (role ``prompt`` or ``prefix``) needs; returns the modules to hook."""
        if site.role == PROMPT_KEY:
            modules = []
            if self.prompt is None:
                self.prompt = Prompt(self.anatomy, site.module, self._program)
                self._add(self.before, site.module, self.prompt.call, first=True)  # before a prefix's slots go in
                self.strip[site.module] = self.prompt.strip
                modules.append(site.module)
            if site.input_module is not site.module and site.input_module not in self.after:
                self._add(self.after, site.input_module, self.prompt.embedded_output)
                modules.append(site.input_module)
            return modules
        if any(s.key == site.key for s in self.cached.sites) or site.input_module in self.strip:
            return []
        if self.anatomy.cached(site.stack):
            model = self.anatomy.model
            if not self.cached.sites:
                self._add(self.before, model, self.cached.call)
            self.cached.add(site)
            name = cache_argument(site.input_module)  # GPT-NeoX's attention: layer_past
            self._add(self.before, site.input_module,
                      lambda args, kwargs: self.cached.reinject(site, name, args, kwargs))
            return [model, site.input_module]
        self._add(self.before, site.input_module, lambda args, kwargs: self.rows.call(site, args, kwargs))
        self.strip[site.input_module] = lambda output: self.rows.strip(site, output)
        modules = [site.input_module]
        for index, role in enumerate(("k", "v")):
            projection = next(s for s in self.anatomy.sites(role) if s.stack == site.stack and s.layer == site.layer)
            if projection.columns is not None:
                raise AnatomyError(
                    f"Prefix tuning on {projection.key}: a fused key/value projection in a stack without a cache "
                    "is not supported. Map separate k and v projections with splice.attach(model, roles=...)."
                )
            self._add(self.after, projection.module,
                      lambda args, kwargs, y, index=index: self.rows.projection(site, index, args, kwargs, y))
            modules.append(projection.module)
        return modules

    @staticmethod
    def _add(table: dict, module: nn.Module, handler: Handler, first: bool = False) -> None:
        handlers = table.setdefault(module, [])
        handlers.insert(0, handler) if first else handlers.append(handler)


__all__ = ["SoftTokens"]
