"""AdapterHub prefix and prompt tuning as splice PrefixTuning and PromptTuning(insert="embedded").

What ``adapters`` 1.3.0 saves (``methods/prefix_tuning.py``): one ``PrefixTuningPool``
shared by every layer, so each tensor is saved once per reference to it, under
``[<model prefix>.]prefix_tuning.prefix_tunings.<name>.<location>.<param>`` and
``<layer path>.prefix_tuning.pool.prefix_tunings.<name>.<location>.<param>`` (the same
values); ``<location>`` is ``self_prefix`` (``self`` on DistilBERT). ``<param>``:

- ``flat=True``: ``control_trans`` ``[P · n_layers · 2 · heads · head_dim]``, the prefix itself;
- ``flat=False``: ``wte.weight`` ``[P, hidden]`` and the MLP ``control_trans.0`` (Linear
  hidden → bottleneck_size), activation ``non_linearity`` (``transformers``'
  ``get_activation``; ``leakyrelu``: ``F.leaky_relu``), ``control_trans.2`` (Linear →
  ``n_layers · 2 · heads · head_dim``); the prefix is ``control_trans(wte(arange(P)))``,
  which splice folds on load (dropout only acts in training).

Either way the ``[P, n_layers · 2 · heads · head_dim]`` table is viewed as ``[P,
n_layers · 2, heads, head_dim]`` and the i-th layer with a prefix takes slot ``2i``
as keys and ``2i + 1`` as values (heads = key/value heads): splice's layout. In
each self-attention the prefix keys and values are put in front of the projected
ones, the mask grows by P attended slots, and positions are left alone.

That is exactly splice's encoder prefix (placeholder rows; max |Δ| ≤ 2.4e-7 against
``adapters`` 1.3.0 on tiny BERT, RoBERTa, XLM-R, ELECTRA and DistilBERT, padded
rows included). Refused, because ``adapters`` computes something else:

- decoders: ``adapters`` keeps the real tokens at positions 0.. (the prefix keys
  unrotated), where splice (and peft) number them from P: 0.043 (Llama) and 0.30
  (GPT-2) apart on tiny models;
- DeBERTa (relative positions): ``adapters`` gives the prefix keys no relative-
  position terms, splice places them at distances −P..−1: 1.6e-3 apart;
- encoder-decoder models, ``leave_out`` (splice prefixes every block), ``use_gating``.

Prompt tuning (``"architecture": "prompt_tuning"``, ``methods/prompt_tuning.py``) is one
``prompt_embedding.weight`` ``[P, embedding_size]`` under ``[<model prefix>.]prompt_tuning.prompt_tunings.
<name>.``, put (``combine="prefix"``) in front of the *output* of the model's embedding block
(after position embeddings and LayerNorm; the real tokens keep positions 0..), with P attended
mask slots in every self-attention: splice's ``PromptTuning(insert="embedded")``, read on the
BERT family (max |Δ| 0 on the real positions of a tiny BERT, padded row included).
``combine="prefix_after_bos"`` is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import AnatomyError, CheckpointError
from ..methods import PrefixTuning, PromptTuning
from .options import refuse_unknown

if TYPE_CHECKING:
    from ..anatomy import Anatomy

ARCHITECTURES = ("prefix_tuning", "prompt_tuning")
_HONOURED = {
    "architecture", "prefix_length", "flat", "bottleneck_size", "non_linearity", "dropout", "init_weights_seed",
    "encoder_prefix", "cross_prefix", "shared_gating", "leave_out", "use_gating",
}
_KEY = re.compile(r"(?:.+\.)?prefix_tunings\.(?P<name>[^.]+)\.(?P<location>[^.]+)\."
                  r"(?P<param>wte\.weight|control_trans(?:\.[02]\.(?:weight|bias))?)")
_PROMPT_HONOURED = {"architecture", "prompt_length", "prompt_init", "prompt_init_text", "random_uniform_scale",
                    "combine", "init_weights_seed"}  # the init options only set the starting values
_PROMPT_KEY = re.compile(r"(?:.+\.)?prompt_tunings\.(?P<name>[^.]+)\.prompt_embedding\.weight")
_RENAMED = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # what adapters does to configs without a "version"


def check_options(anatomy: Anatomy, options: dict, source: Path) -> None:
    """Refuse prompt tuning, and prefix options or models whose prefix splice cannot reproduce."""
    if options["architecture"] == "prompt_tuning":
        _check_prompt(anatomy, options, source)
        return
    refuse_unknown(options, source, "AdapterHub prefix_tuning", _HONOURED)
    if options.get("use_gating"):
        raise CheckpointError(f"{source}: use_gating=True (a learned gate on the prefix, as in UniPELT) is not "
                              "implemented by splice's PrefixTuning.")
    if options.get("leave_out"):
        raise CheckpointError(f"{source}: leave_out={options['leave_out']} leaves some blocks without a prefix; a "
                              "splice PrefixTuning covers every self-attention block (one mask serves them all).")
    length = options.get("prefix_length", 30)
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise CheckpointError(f"{source}: prefix_length must be a positive integer, got {length!r}.")
    anatomy = anatomy
    why = None
    if anatomy.encoder_decoder:
        why = "encoder-decoder models (adapters has encoder, decoder and cross-attention prefixes) are not read"
    elif any(anatomy.cached(site.stack) for site in _sites(anatomy, source)):
        why = ("on decoders adapters keeps the real tokens at positions 0.., while splice's prefix numbers them from "
               "the prefix length P (as peft does); rotary and learned positions then differ (0.043 on a tiny Llama, "
               "0.30 on a tiny GPT-2)")
    elif anatomy.positions == "relative":
        why = ("adapters gives the prefix keys no relative-position terms, while splice's prefix sits at relative "
               "distances -P..-1 (1.6e-3 apart on a tiny DeBERTa)")
    if why:
        raise CheckpointError(f"{source}: AdapterHub prefix tuning on model_type {anatomy.model_type!r} is refused: "
                              f"{why}. splice reads it on encoders with absolute positions (BERT family, DistilBERT).")


def prefix_from(anatomy: Anatomy, options: dict, tensors: dict[str, torch.Tensor], versioned: bool,
                source: Path) -> tuple[PrefixTuning, dict[str, torch.Tensor]]:
    """A splice PrefixTuning and its per-layer keys and values from AdapterHub's prefix pool."""
    params: dict[str, torch.Tensor] = {}
    seen = set()
    for key, tensor in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"{source} holds {key!r}, which is not a prefix-tuning tensor; splice does not "
                                  "know what it belongs to.")
        seen.add((match["name"], match["location"]))
        earlier = params.setdefault(match["param"], tensor)
        if not torch.equal(earlier, tensor):  # copies of one shared pool
            raise CheckpointError(f"{source}: the copies of {match['param']} differ; the file is inconsistent.")
    if len(seen) != 1:
        raise CheckpointError(f"{source} holds prefixes of several adapters or locations "
                              f"({', '.join('.'.join(s) for s in sorted(seen)) or 'none'}); splice reads one.")
    length = options.get("prefix_length", 30)
    sites = _sites(anatomy, source)
    width = sites[0].in_features
    size = len(sites) * 2 * width
    flat = options.get("flat", False)
    expected = {"control_trans"} if flat else {"wte.weight", "control_trans.0.weight", "control_trans.0.bias",
                                               "control_trans.2.weight", "control_trans.2.bias"}
    if set(params) != expected:
        raise CheckpointError(f"{source}: a prefix with flat={flat} holds {sorted(expected)}, found {sorted(params)}.")
    if flat:
        if params["control_trans"].numel() != length * size:
            raise CheckpointError(
                f"{source}: control_trans has {params['control_trans'].numel()} values, but prefix_length {length} "
                f"over this model's {len(sites)} layers of {width}-wide keys and values needs {length * size}.")
        table = params["control_trans"].reshape(length, size)
    else:
        table = _fold(params, length, size, _activation(options, versioned, source), source)
    state = {}
    for index, site in enumerate(sites):
        state[f"{site.key}.key"] = table[:, 2 * index * width:(2 * index + 1) * width].contiguous()
        state[f"{site.key}.value"] = table[:, (2 * index + 1) * width:(2 * index + 2) * width].contiguous()
    return PrefixTuning(length=length), state


def _sites(anatomy: Anatomy, source: Path):
    try:
        return anatomy.prefix_sites()
    except AnatomyError as error:
        raise CheckpointError(f"The prefix in {source} does not fit this model: {error}") from error


def _activation(options: dict, versioned: bool, source: Path):
    name = str(options.get("non_linearity", "tanh")).lower()
    if not versioned:
        name = _RENAMED.get(name, name)
    if name == "leakyrelu":
        return F.leaky_relu
    from transformers.activations import get_activation

    try:
        return get_activation(name)
    except KeyError as error:
        raise CheckpointError(f"{source}: non_linearity {name!r} is not an activation transformers knows.") from error


def _fold(params: dict[str, torch.Tensor], length: int, size: int, act, source: Path) -> torch.Tensor:
    """``control_trans(wte(arange(P)))``: the prefix the MLP computes."""
    embedding, first, last = params["wte.weight"], params["control_trans.0.weight"], params["control_trans.2.weight"]
    if (embedding.dim() != 2 or embedding.shape[0] != length or first.dim() != 2 or first.shape[1] != embedding.shape[1]
            or last.dim() != 2 or last.shape != (size, first.shape[0])):
        raise CheckpointError(
            f"{source}: the prefix MLP has shapes wte {list(embedding.shape)}, control_trans.0 {list(first.shape)}, "
            f"control_trans.2 {list(last.shape)}; prefix_length {length} and this model need wte [{length}, hidden] "
            f"and an output of {size} (layers x 2 x key width).")
    with torch.no_grad():
        hidden = act(F.linear(embedding.float(), first.float(), params["control_trans.0.bias"].float()))
        table = F.linear(hidden, last.float(), params["control_trans.2.bias"].float())
    return table.to(embedding.dtype)


def _check_prompt(anatomy: Anatomy, options: dict, source: Path) -> None:
    refuse_unknown(options, source, "AdapterHub prompt_tuning", _PROMPT_HONOURED)
    if options.get("combine", "prefix") != "prefix":
        raise CheckpointError(f"{source}: combine={options['combine']!r} (the prompt after the first token) is not "
                              "implemented by splice; it reads combine='prefix'.")
    length = options.get("prompt_length", 10)
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise CheckpointError(f"{source}: prompt_length must be a positive integer, got {length!r}.")
    try:
        anatomy.prompt_site(embedded=True)
    except AnatomyError as error:
        raise CheckpointError(f"AdapterHub prompt tuning in {source} cannot be read here: {error}") from error


def prompt_from(options: dict, tensors: dict[str, torch.Tensor],
                source: Path) -> tuple[PromptTuning, dict[str, torch.Tensor]]:
    """A splice PromptTuning(insert="embedded") and its soft tokens from AdapterHub's prompt embedding."""
    found = {}
    for key, tensor in tensors.items():
        match = _PROMPT_KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"{source} holds {key!r}, which is not a prompt-tuning tensor; splice does not "
                                  "know what it belongs to.")
        found[match["name"]] = tensor
    if len(found) != 1:
        raise CheckpointError(f"{source} holds {len(found)} prompts ({', '.join(sorted(found)) or 'none'}); "
                              "splice reads one.")
    table = next(iter(found.values()))
    length = options.get("prompt_length", 10)
    if table.dim() != 2 or table.shape[0] != length:
        raise CheckpointError(f"{source}: prompt_embedding is {list(table.shape)}, but prompt_length is {length}.")
    return PromptTuning(length=length, insert="embedded"), {"prompt.embedding": table.contiguous()}
