"""AdapterHub bottleneck adapters (``seq_bn``/Pfeiffer, ``double_seq_bn``/Houlsby, ``par_bn``) as splice Bottlenecks.

What AdapterHub computes at a location where a sublayer's output ``h`` meets the
residual stream ``x`` (``N``: the block's post-LN on post-LN models, none on
pre-norm ones), with ``f(a) = s·up(act(down(a)))``:

- ``original_ln_before=True`` (seq_bn): the block's output is ``N(h + x + f(N(h + x)))``,
  i.e. splice's ``Bottleneck(residual_input=True)``;
- ``original_ln_before=False`` (double_seq_bn): ``N(h + f(h) + x)``, splice's plain sequential Bottleneck;
- ``is_parallel=True`` (par_bn): ``N(h + x + s·f(x))``, ``Bottleneck(placement="parallel", residual_input=True)``.

Options that change this arithmetic in other ways are refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CheckpointError
from ..methods import Bottleneck

if TYPE_CHECKING:
    from ..model import AdaptedModel

# Location in the saved model -> splice sublayer role (BERT-style names, then AdapterHub's mixin names).
_KEY = re.compile(
    r"\.(?P<layer>\d+)\.(?P<where>attention\.output\.adapters|output\.adapters|attention_adapters\.adapters|"
    r"output_adapters\.adapters)\.(?P<name>[^.]+)\.(?P<param>.+)$"
)
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "silu", "tanh": "tanh"}
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


def bottleneck_from(model: "AdaptedModel", options: dict, tensors: dict[str, torch.Tensor], versioned: bool,
                    source: Path) -> tuple[Bottleneck, dict[str, torch.Tensor]]:
    """The splice Bottleneck config and its checkpoint tensors for an AdapterHub bottleneck adapter."""
    _check(options, versioned, source)
    stacks = [stack for stack, blocks in model.anatomy.blocks.items() if blocks]
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
        state.update({f"{stacks[0]}.{layer}.{site_role}.{k}": v for k, v in mapped.items()})
    if len(widths) != 1:
        raise CheckpointError(f"{source}: bottleneck widths differ between layers ({sorted(widths)}); "
                              "one splice Bottleneck has one width.")
    count = len(model.anatomy.blocks[stacks[0]])
    placement = "parallel" if parallel else "houlsby" if roles == ["attn", "ffn"] else "pfeiffer"
    config = Bottleneck(
        placement=placement, roles=tuple(roles), r=widths.pop(), non_linearity=_activation(options, versioned, source),
        scale=float(options.get("scaling", 1.0)), ln_before=bool(options.get("ln_before")),
        ln_after=bool(options.get("ln_after")), dropout=float(options.get("dropout", 0.0) or 0.0),
        residual_input=residual, layers=None if layers == list(range(count)) else tuple(layers),
    )
    return config, state


def _check(options: dict, versioned: bool, source: Path) -> None:
    for key, value in options.items():
        if key in _REQUIRED:
            wanted, what = _REQUIRED[key]
            if value != wanted and not (wanted in (False, None, 0.0) and not value):
                raise CheckpointError(f"{source}: option {key}={value!r} ({what}) is not implemented by splice.")
        elif key not in _INERT:
            raise CheckpointError(f"{source}: option {key}={value!r} is unknown to splice's bottleneck reader.")
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
    if name not in _ACTIVATIONS:
        raise CheckpointError(f"{source}: non_linearity {name!r} is not implemented by splice "
                              f"(it offers {', '.join(_ACTIVATIONS)}).")
    return _ACTIVATIONS[name]


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
