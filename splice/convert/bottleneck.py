"""AdapterHub bottleneck adapters (``seq_bn``/Pfeiffer, ``double_seq_bn``/Houlsby, ``par_bn``) as splice Bottlenecks.

What AdapterHub computes at a location where a sublayer's output ``h`` meets the
residual stream ``x`` (``N``: the block's post-LN on post-LN models, none on
pre-norm ones), with ``f(a) = s·up(act(down(a)))``:

- ``original_ln_before=True`` (seq_bn): the block's output is ``N(h + x + f(N(h + x)))``,
  i.e. splice's ``Bottleneck(residual_input=True)``;
- ``original_ln_before=False`` (double_seq_bn): ``N(h + f(h) + x)``, splice's plain sequential Bottleneck;
- ``is_parallel=True`` (par_bn): ``N(h + x + s·f(x))``, ``Bottleneck(placement="parallel", residual_input=True)``.

Options that change this arithmetic in other ways are refused by name.

:func:`save_adapters` writes the reverse: a splice Bottleneck that one of these
computes becomes an AdapterHub folder (``adapter_config.json`` +
``pytorch_adapter.bin``) for ``bert``/``roberta``/``xlm-roberta``/``electra`` and
``llama``/``mistral`` models; anything else is refused, saying why.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..adapter import Adapter
from ..anatomy import Anatomy, site_key
from ..checkpoint import check_materialised
from ..errors import AdapterError, CheckpointError
from ..file_names import ADAPTERHUB_WEIGHTS
from ..folders import write_folder
from ..methods import Bottleneck
from ..methods.base import ACTIVATIONS
from .detect import FOREIGN_CONFIG
from .options import refuse_unknown

# Location in the saved model -> splice sublayer role (BERT-style names, then AdapterHub's mixin names).
_KEY = re.compile(
    r"\.(?P<layer>\d+)\.(?P<where>attention\.output\.adapters|output\.adapters|attention_adapters\.adapters|"
    r"output_adapters\.adapters)\.(?P<name>[^.]+)\.(?P<param>.+)$"
)
# Options whose value must be exactly this for splice to compute the same thing.
_REQUIRED = {
    "original_ln_after": (True, "the base's own residual add and LayerNorm after the adapter"),
    "residual_before_ln": (True, "where the adapter's residual is taken"),
    "phm_layer": (False, "Compacter (parameterised hypercomplex) layers"),
    "use_gating": (False, "a learned gate on the adapter output"),
    "cross_adapter": (False, "adapters on encoder-decoder cross-attention"),
    "inv_adapter": (None, "invertible adapters on the embeddings"),
    "stochastic_depth": (0.0, "stochastic depth (drop path)"),
}
# Options that do not change a trained adapter's outputs, or that splice reads from the tensors.
_INERT = {
    "mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before", "ln_before", "ln_after",
    "adapter_residual_before_ln", "init_weights", "init_weights_seed", "is_parallel", "scaling", "leave_out",
    "dropout", "inv_adapter_reduction_factor", "architecture", "dtype",
    # Compacter settings, unused while phm_layer is False
    "phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "phm_c_init",
    "phm_init_range", "learn_phm", "hypercomplex_nonlinearity", "phm_rank", "phm_bias",
}


def is_bottleneck(options: dict) -> bool:
    """AdapterHub bottleneck configs carry no ``architecture`` but a ``reduction_factor``."""
    return options.get("architecture") in (None, "bottleneck") and "reduction_factor" in options


def bottleneck_from(anatomy: Anatomy, options: dict, tensors: dict[str, torch.Tensor], versioned: bool,
                    source: Path) -> tuple[Bottleneck, dict[str, torch.Tensor]]:
    """The splice Bottleneck config and its checkpoint tensors for an AdapterHub bottleneck adapter."""
    _check(options, versioned, source)
    stacks = [stack for stack, blocks in anatomy.blocks.items() if blocks]
    if len(stacks) != 1:
        raise CheckpointError(f"{source}: AdapterHub bottleneck adapters are read for single-stack models only.")
    by_site: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise CheckpointError(
                f"{source} holds {key!r}, which is not a bottleneck tensor "
                "(<block>.output.adapters.<name>.adapter_down... / adapter_up...)."
            )
        role = "attn" if match["where"].startswith("attention") else "ffn"
        by_site.setdefault((int(match["layer"]), role), {})[match["param"]] = tensor
    parallel = bool(options.get("is_parallel", False))
    residual = parallel or bool(options.get("original_ln_before", False))
    roles = sorted({role for _, role in by_site}, key=("attn", "ffn").index)
    layers = sorted({layer for layer, _ in by_site})
    state, widths = {}, set()
    for (layer, role), params in by_site.items():
        mapped = _params(params, bool(options.get("ln_before")), bool(options.get("ln_after")), source)
        widths.add(mapped["down.weight"].shape[0])
        site_role = f"{role}_residual" if residual else role
        state.update({f"{site_key(stacks[0], layer, site_role)}.{k}": v for k, v in mapped.items()})
    if len(widths) != 1:
        raise CheckpointError(f"{source}: bottleneck widths differ between layers ({sorted(widths)}); "
                              "one splice Bottleneck has one width.")
    count = len(anatomy.blocks[stacks[0]])
    placement = "parallel" if parallel else "houlsby" if roles == ["attn", "ffn"] else "pfeiffer"
    config = Bottleneck(
        placement=placement, roles=tuple(roles), r=widths.pop(), non_linearity=_activation(options, versioned, source),
        scale=float(options.get("scaling", 1.0)), ln_before=bool(options.get("ln_before")),
        ln_after=bool(options.get("ln_after")), dropout=float(options.get("dropout", 0.0) or 0.0),
        residual_input=residual, layers=None if layers == list(range(count)) else tuple(layers),
    )
    return config, state


def _check(options: dict, versioned: bool, source: Path) -> None:
    refuse_unknown(options, source, "AdapterHub bottleneck", _REQUIRED.keys() | _INERT)
    for key, value in options.items():
        wanted, what = _REQUIRED.get(key, (value, ""))
        if value != wanted and not (wanted in (False, None, 0.0) and not value):
            raise CheckpointError(f"{source}: option {key}={value!r} ({what}) is not implemented by splice.")
    scaling = options.get("scaling", 1.0)
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise CheckpointError(f"{source}: scaling={scaling!r} (a learned scaling) is not implemented by splice; "
                              "a fixed number is.")
    if options.get("ln_after") and (options.get("adapter_residual_before_ln") or scaling != 1.0):
        raise CheckpointError(f"{source}: ln_after with adapter_residual_before_ln or scaling != 1 normalises "
                              "differently from splice's ln_after; not implemented.")


def _activation(options: dict, versioned: bool, source: Path) -> str:
    name = str(options.get("non_linearity", "relu")).lower()
    if not versioned and name == "gelu":  # adapter-transformers (no "version") meant the tanh approximation
        name = "gelu_new"
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{source}: non_linearity {name!r} is not implemented by splice "
                              f"(it offers {', '.join(ACTIVATIONS)}).")
    return name


def _params(params: dict[str, torch.Tensor], ln_before: bool, ln_after: bool, source: Path) -> dict[str, torch.Tensor]:
    """AdapterHub parameter names -> splice BottleneckDelta names."""
    down = "adapter_down.1" if ln_before else "adapter_down.0"  # with ln_before, the Sequential starts with the norm
    names = {f"{down}.weight": "down.weight", f"{down}.bias": "down.bias",
             "adapter_up.weight": "up.weight", "adapter_up.bias": "up.bias"}
    if ln_before:
        names.update({"adapter_norm_before.weight": "ln_before.weight", "adapter_norm_before.bias": "ln_before.bias"})
    if ln_after:
        names.update({"adapter_norm_after.weight": "ln_after.weight", "adapter_norm_after.bias": "ln_after.bias"})
    ignored = {"adapter_down.0.weight", "adapter_down.0.bias"} if ln_before else set()  # the norm, registered twice
    unknown = sorted(set(params) - set(names) - ignored)
    missing = sorted(set(names) - set(params))
    if unknown or missing:
        raise CheckpointError(f"{source}: unexpected bottleneck tensors {unknown}, missing {missing}.")
    return {names[k]: v for k, v in params.items() if k in names}


# -- writing ------------------------------------------------------------------------------------

# Where AdapterHub puts the bottleneck of each location, by model type (the block's path prepended):
# BERT-style models keep it on the sublayer's output module, the others on the block itself.
_BERT_PLACES = {"attn": "attention.output.adapters", "ffn": "output.adapters"}
_BLOCK_PLACES = {"attn": "attention_adapters.adapters", "ffn": "output_adapters.adapters"}
PLACES = {"bert": _BERT_PLACES, "roberta": _BERT_PLACES, "xlm-roberta": _BERT_PLACES, "electra": _BERT_PLACES,
          "llama": _BLOCK_PLACES, "mistral": _BLOCK_PLACES}
# adapters 1.3.0's BnConfig.to_dict(), as it writes it (SeqBnConfig defaults; the writer overrides what differs).
BN_DEFAULTS = {
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0, "factorized_phm_W": True,
    "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
    "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None, "is_parallel": False,
    "learn_phm": True, "leave_out": [], "ln_after": False, "ln_before": False, "mh_adapter": False,
    "non_linearity": "relu", "original_ln_after": True, "original_ln_before": True, "output_adapter": True,
    "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False,
    "phm_rank": 1, "reduction_factor": 16, "residual_before_ln": True, "scaling": 1.0, "shared_W_phm": False,
    "shared_phm_rule": True, "stochastic_depth": 0.0, "use_gating": False,
}
ADAPTERS_VERSION = "adapters.1.3.0"
BIN_FILE = ADAPTERHUB_WEIGHTS[1]  # the file adapters reads by default


def bottleneck_to(anatomy: Anatomy, adapter: Adapter, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """AdapterHub's ``adapter_config.json`` contents and tensors for splice Bottleneck adapter ``name``.

    Refuses, naming the reason, what AdapterHub cannot compute the same way.
    """
    config = adapter.config
    why = _unwritable(anatomy, name, adapter)
    if why:
        raise AdapterError(f"Adapter {name!r} cannot be written in AdapterHub's format: {why}")
    stack = next(stack for stack, blocks in anatomy.blocks.items() if blocks)
    blocks = anatomy.blocks[stack]
    places = PLACES[anatomy.model_type]
    tensors: dict[str, torch.Tensor] = {}
    roles, layers, widths = set(), set(), set()
    for site, delta in adapter.items():
        role = site.role.removesuffix("_residual")
        roles.add(role)
        layers.add(site.layer)
        widths.add(delta.down.weight.shape[0])
        prefix = f"{blocks[site.layer][0]}.{places[role]}.{name}."
        down = "adapter_down.1" if delta.ln_before is not None else "adapter_down.0"
        params = {f"{down}.weight": delta.down.weight, f"{down}.bias": delta.down.bias,
                  "adapter_up.weight": delta.up.weight, "adapter_up.bias": delta.up.bias}
        if delta.ln_before is not None:  # AdapterHub registers the norm twice: as itself and as adapter_down.0
            for p in ("weight", "bias"):
                params[f"adapter_norm_before.{p}"] = getattr(delta.ln_before, p)
                params[f"adapter_down.0.{p}"] = getattr(delta.ln_before, p)
        if delta.ln_after is not None:
            params.update({f"adapter_norm_after.{p}": getattr(delta.ln_after, p) for p in ("weight", "bias")})
        tensors.update({prefix + key: t.detach().cpu().clone().contiguous() for key, t in params.items()})
    hidden = anatomy.hidden_size
    width = widths.pop()
    options = dict(BN_DEFAULTS)
    options.update(
        mh_adapter="attn" in roles, output_adapter="ffn" in roles, reduction_factor=_reduction_factor(hidden, width),
        non_linearity=config.non_linearity, original_ln_before=config.residual_input and not config.parallel,
        is_parallel=config.parallel, scaling=float(config.scale), ln_before=config.ln_before, ln_after=config.ln_after,
        dropout=float(config.dropout), leave_out=[i for i in range(len(blocks)) if i not in layers],
    )
    meta = {"config": options, "hidden_size": hidden, "model_class": type(anatomy.model).__name__, "model_name": "",
            "model_type": anatomy.model_type, "name": name, "version": ADAPTERS_VERSION}
    return meta, tensors


def _unwritable(anatomy: Anatomy, name: str, adapter) -> str | None:
    """Why ``adapter`` has no AdapterHub equivalent (None: it has one)."""
    config = adapter.config
    if not isinstance(config, Bottleneck):
        return (f"it is a {config.method!r} adapter; splice writes AdapterHub's format for bottleneck adapters "
                "only. Save it with format='splice' (or format='peft' for LoRA, IA3, prompt and prefix tuning).")
    if adapter.head is not None:
        kind = "a splice head" if adapter.task_head is not None else f"a copy of the base head {adapter.head_path!r}"
        return f"it has {kind}, which this writer does not express as an AdapterHub head. Save with format='splice'."
    model_type = anatomy.model_type
    if model_type not in PLACES:
        return (f"model type {model_type!r} is not one whose AdapterHub bottleneck placement splice knows "
                f"({', '.join(PLACES)}).")
    if sum(1 for blocks in anatomy.blocks.values() if blocks) != 1:
        return "AdapterHub bottleneck folders are written for single-stack models only."
    roles = {site.role.removesuffix("_residual") for site in adapter.sites.values()}
    if not roles <= {"attn", "ffn"}:
        return (f"it adapts {sorted(roles - {'attn', 'ffn'})}; AdapterHub bottlenecks sit after attention "
                "(mh_adapter) and after the FFN (output_adapter) only.")
    if config.parallel and not config.residual_input:
        return ("a parallel bottleneck fed the sublayer's own input has no AdapterHub equivalent: par_bn reads the "
                "residual stream. Use Bottleneck(placement='parallel', residual_input=True).")
    if config.non_linearity not in ACTIVATIONS:
        return f"non_linearity {config.non_linearity!r} has no AdapterHub name splice maps."
    if config.ln_after and config.scale != 1.0:
        return ("ln_after with scale != 1: AdapterHub normalises the scaled up-projection, splice scales the "
                "normalised one.")
    widths = {delta.down.weight.shape[0] for _, delta in adapter.items()}
    if len(widths) != 1:
        return f"its widths differ between sites ({sorted(widths)}); AdapterHub has one reduction factor."
    return None


def _reduction_factor(hidden: int, width: int) -> float | int:
    """A reduction factor AdapterHub turns back into ``width``: ``int(hidden // rf) == width``."""
    if hidden % width == 0:
        return hidden // width
    factor = hidden / width
    return factor if int(hidden // factor) == width else hidden / (width + 0.5)


def write_adapterhub(anatomy: Anatomy, adapter: Adapter, name: str, path: str | os.PathLike) -> Path:
    """Write Bottleneck adapter ``name`` as an AdapterHub folder: ``adapter_config.json`` + ``pytorch_adapter.bin``.

    The weights go in ``pytorch_adapter.bin`` (a plain mapping of tensors, which ``torch.load(weights_only=True)``
    reads), the file ``adapters``' ``load_adapter`` reads by default (``use_safetensors=True`` falls back to it).
    Tensor names carry the model's own block paths (``bert.encoder.layer.0...`` on a model with a head,
    ``encoder.layer.0...`` on a bare one), which ``adapters`` loads into either.
    """
    check_materialised(adapter, name)
    meta, tensors = bottleneck_to(anatomy, adapter, name)

    def fill(staging: Path) -> None:
        torch.save(tensors, staging / BIN_FILE)
        (staging / FOREIGN_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return write_folder(path, fill, marker=FOREIGN_CONFIG)
