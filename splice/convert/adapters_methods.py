"""AdapterHub Compacter, ReFT and invertible-adapter folders as splice adapters.

- Compacter (``phm_layer=True``): the bottleneck is read by :mod:`.bottleneck` from the dense
  weights its PHM layers compute, then kept in PHM form as a :class:`~splice.methods.Compacter`
  with the same placement. A shared rule or ``W`` (``shared_phm_rule`` / ``shared_W_phm``) is
  stored under ``shared_parameters.<name>``; the shared rule is copied into every layer.
  AdapterHub saves it only from a model with a head: its save filter looks for
  ``.shared_parameters.<name>.``, which a bare base model's key (no leading dot) does not
  match, so such folders lack it and cannot be reproduced by anyone (refused, saying so).
- ReFT (``architecture="reft"``): a :class:`~splice.methods.ReFT`. AdapterHub does not write
  ``subtract_projection`` to the config (a class attribute), so a DiReFT folder reads back, in
  AdapterHub as here, as NoReFT/LoReFT (with the projection subtracted).
- Invertible adapters (``inv_adapter="nice"|"glow"``, MAD-X ``seq_bn_inv`` / ``double_seq_bn_inv``):
  a :class:`~splice.methods.Union` of the bottleneck and an :class:`~splice.methods.Invertible`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CheckpointError
from ..methods import Bottleneck, Compacter, Invertible, MethodConfig, ReFT, Union
from ..methods.compacter import phm_matrix
from .bottleneck import bottleneck_from

if TYPE_CHECKING:
    from ..anatomy import Anatomy

_PHM_OPTIONS = ("phm_dim", "phm_rank", "factorized_phm_W", "factorized_phm_rule", "learn_phm", "phm_c_init",
                "phm_init_range", "hypercomplex_nonlinearity", "phm_bias")
_SHARED = re.compile(r"(^|\.)shared_parameters\.[^.]+\.(?P<param>.+)$")
_PHM = re.compile(r"^(?P<layer>.+\.(adapter_down\.\d+|adapter_up))\.(?P<param>W|W_left|W_right|b|phm_rule|"
                  r"phm_rule_left|phm_rule_right)$")
_REFT = re.compile(r"\.(?P<layer>\d+)\.reft_layer\.refts\.[^.]+\.units\.(?P<unit>\d+)\.(?P<param>.+)$")
_INVERTIBLE = re.compile(r"(^|\.)invertible_adapters\.[^.]+\.(?P<param>.+)$")
# ReftConfig options: honoured (by the config or the tensors), or inert once trained.
_REFT_OPTIONS = {"architecture", "layers", "prefix_positions", "suffix_positions", "r", "orthogonality",
                 "tied_weights", "dropout", "non_linearity", "dtype", "output_reft", "init_weights_seed",
                 "subtract_projection"}


def handles(options: dict) -> bool:
    """Whether ``options`` (an AdapterHub config) is one this module reads."""
    return options.get("architecture") == "reft" or bool(options.get("phm_layer")) or bool(options.get("inv_adapter"))


def method_from(anatomy: Anatomy, options: dict, tensors: dict[str, torch.Tensor], versioned: bool,
                source: Path) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
    """The splice config and checkpoint tensors for an AdapterHub Compacter, ReFT or invertible adapter."""
    if options.get("architecture") == "reft":
        return _reft(anatomy, options, tensors, source)
    inverse = {k: v for k, v in tensors.items() if _INVERTIBLE.search(k)}
    rest = {k: v for k, v in tensors.items() if k not in inverse}
    plain = {**options, "inv_adapter": None, "phm_layer": False}
    if options.get("phm_layer"):
        config, state = _compacter(anatomy, options, plain, rest, versioned, source)
    else:
        config, state = bottleneck_from(anatomy, plain, rest, versioned, source)
    if not options.get("inv_adapter"):
        return config, state
    invertible, inv_state = _invertible(options, inverse, source)
    union = Union(config, invertible)
    state = {_member(key, config.method): value for key, value in state.items()}
    state.update({f"invertible.members.invertible.{key}": value for key, value in inv_state.items()})
    return union, state


def _member(key: str, method: str) -> str:
    """``layers.0.ffn.down.weight`` -> ``layers.0.ffn.members.<method>.down.weight`` (a Union's delta names)."""
    stack, layer, role, param = key.split(".", 3)
    return f"{stack}.{layer}.{role}.members.{method}.{param}"


def _compacter(anatomy: Anatomy, options: dict, plain: dict, tensors: dict[str, torch.Tensor], versioned: bool,
               source: Path) -> tuple[Compacter, dict[str, torch.Tensor]]:
    if options.get("shared_W_phm"):
        raise CheckpointError(f"{source}: shared_W_phm=True (one PHM weight shared by every layer) is not "
                              "implemented by splice.")
    shared = {m["param"]: t for k, t in tensors.items() if (m := _SHARED.search(k))}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    dense: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if _SHARED.search(key):
            continue
        match = _PHM.match(key)
        if match is None:
            dense[key] = tensor  # adapter norms: the bottleneck reader checks them
            continue
        layers.setdefault(match["layer"], {})[match["param"]] = tensor
    rule_names = ("phm_rule_left", "phm_rule_right") if options.get("factorized_phm_rule") else ("phm_rule",)
    if options.get("shared_phm_rule", True):
        missing = [name for name in rule_names if name not in shared]
        if missing:
            raise CheckpointError(
                f"{source} is a Compacter with shared_phm_rule=True but holds no shared rule ({', '.join(missing)}): "
                "AdapterHub does not save shared parameters from a bare base model (its save filter needs "
                "'.shared_parameters.<name>.'), so this folder cannot reproduce its adapter in any library. "
                "Save it again from a model with a head (e.g. BertForSequenceClassification)."
            )
    # The bottleneck reader sees each PHM layer's dense weight, and tells which splice site it belongs to.
    owner: dict[int, str] = {}
    for layer, params in layers.items():
        rule_params = {name: shared.get(name, params.get(name)) for name in rule_names}
        if any(v is None for v in rule_params.values()):
            raise CheckpointError(f"{source}: the PHM layer {layer} has no rule ({', '.join(rule_names)}).")
        rule = rule_params["phm_rule"] if "phm_rule" in rule_params else torch.bmm(*rule_params.values())
        blocks = params.get("W")
        if blocks is None:
            if "W_left" not in params or "W_right" not in params:
                raise CheckpointError(f"{source}: the PHM layer {layer} needs W or W_left and W_right.")
            blocks = torch.bmm(params["W_left"], params["W_right"])
        weight = phm_matrix(rule, blocks).t()
        bias = params.get("b", weight.new_zeros(weight.shape[0]))
        dense[f"{layer}.weight"], dense[f"{layer}.bias"] = weight, bias
        owner[id(weight)] = layer
        params.update(rule_params)
    bottleneck, state = bottleneck_from(anatomy, plain, dense, versioned, source)
    compacter = Compacter(**{f.name: getattr(bottleneck, f.name) for f in dataclasses.fields(Bottleneck)},
                          **{name: options[name] for name in _PHM_OPTIONS if name in options})
    out = {}
    for key, tensor in state.items():
        prefix, _, param = key.rpartition(".")
        if param == "weight" and id(tensor) in owner:
            out.update({f"{prefix}.{name}": value for name, value in layers[owner[id(tensor)]].items()})
        elif param == "bias" and prefix.rsplit(".", 1)[1] in ("down", "up"):
            continue  # a PHM layer's bias is its "b", taken with its weight
        else:
            out[key] = tensor
    return compacter, out


def _reft(anatomy: Anatomy, options: dict, tensors: dict[str, torch.Tensor], source: Path):
    unknown = sorted(set(options) - _REFT_OPTIONS)
    if unknown:
        raise CheckpointError(f"{source}: ReFT option(s) {unknown} are unknown to splice's reader.")
    if options.get("dtype") not in (None, "float32"):
        raise CheckpointError(f"{source}: ReFT dtype={options['dtype']!r} is not implemented; splice's "
                              "interventions run in the adapter's float32 weights.")
    if options.get("output_reft", True) is not True:
        raise CheckpointError(f"{source}: output_reft={options['output_reft']!r} is unknown: AdapterHub intervenes "
                              "on block outputs only.")
    layers = options.get("layers", "all")
    stack = next(iter(anatomy.blocks))
    state = {}
    for key, tensor in tensors.items():
        match = _REFT.search(key)
        if match is None:
            raise CheckpointError(f"{source} holds {key!r}, which is not a ReFT tensor "
                                  "(<layer>.reft_layer.refts.<name>.units.<i>...).")
        state[f"{stack}.{match['layer']}.reft.units.{match['unit']}.{match['param']}"] = tensor
    config = ReFT(
        kind="loreft" if options.get("orthogonality") else "noreft", r=options.get("r", 1),
        prefix_positions=options.get("prefix_positions", 3), suffix_positions=options.get("suffix_positions", 0),
        orthogonality=bool(options.get("orthogonality")),
        subtract_projection=bool(options.get("subtract_projection", True)),
        tied_weights=bool(options.get("tied_weights")), dropout=float(options.get("dropout", 0.05) or 0.0),
        non_linearity=options.get("non_linearity"), layers=None if layers == "all" else tuple(layers),
        init="random", orthogonal_map="householder",
    )
    return config, state


def _invertible(options: dict, tensors: dict[str, torch.Tensor], source: Path):
    kind = options["inv_adapter"]
    if kind not in ("nice", "glow"):
        raise CheckpointError(f"{source}: inv_adapter={kind!r} is unknown; AdapterHub defines 'nice' and 'glow'.")
    if not tensors:
        raise CheckpointError(f"{source}: inv_adapter={kind!r} but the folder holds no invertible_adapters tensors.")
    config = Invertible(kind=kind, reduction_factor=options.get("inv_adapter_reduction_factor") or 2,
                        non_linearity=str(options.get("non_linearity", "relu")).lower())
    return config, {_INVERTIBLE.search(k)["param"]: v for k, v in tensors.items()}
