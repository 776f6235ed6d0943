"""peft's LoHa, LoKr, OFT and BOFT folders: read them as splice adapters, and write splice's for peft.

splice keeps peft's tensor names for these methods (``hada_w1_a``, ``lokr_w2``,
``oft_R.weight``, ``boft_R`` / ``boft_s``), so a module's tensors become its
sites' tensors as they are. Where a fused module (GPT-NeoX ``query_key_value``)
hosts several roles: LoHa's rows split exactly by role (the ``a`` factors by
rows), OFT's and BOFT's rotation of the shared input goes to every role (BOFT's
output scales by rows); a Kronecker product does not split by rows, so a fused
LoKr is refused. Writing is the reverse, one peft module per splice site (fused
sites are refused: peft's LyCORIS and OFT layers hold one update per module).

Every option of the four peft configs is honoured or refused by name. The
block layout (``oft_block_size`` / ``r``, ``boft_block_size`` / ``boft_block_num``)
is read from the config and checked against the tensors; BOFT's number of
butterfly factors is read from the tensors, since peft silently uses one factor
wherever its CUDA extension does not build, whatever the config says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapter import Adapter
from ..errors import AdapterError, CheckpointError
from ..methods import BOFT, OFT, LoHa, LoKr
from . import peft_format
from .mapping import SiteIndex, _config, placement, rows_of

if TYPE_CHECKING:
    from ..anatomy import Anatomy

# Per peft_type: the config options splice reads (the rest of peft's bookkeeping is in peft_format.INERT).
_READ = {
    "LOHA": {"r", "alpha", "rank_dropout", "module_dropout", "rank_pattern", "alpha_pattern",
             "use_effective_conv2d", "init_weights"},
    "LOKR": {"r", "alpha", "rank_dropout", "module_dropout", "rank_pattern", "alpha_pattern",
             "use_effective_conv2d", "init_weights", "decompose_both", "decompose_factor", "rank_dropout_scale"},
    "OFT": {"r", "oft_block_size", "module_dropout", "coft", "eps", "block_share", "use_cayley_neumann",
            "num_cayley_neumann_terms", "bias", "init_weights"},
    "BOFT": {"boft_block_size", "boft_block_num", "boft_n_butterfly_factor", "boft_dropout", "bias", "init_weights"},
}
# Tensor names of each kind, after the module path.
_PARTS = {
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "LOKR": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    "OFT": ("oft_R.weight",),
    "BOFT": ("boft_R", "boft_s"),
}
# Tensors peft writes for layers splice has no site for.
_REFUSED_PARTS = {"hada_t1": "LoHa's convolution (CP) factor", "hada_t2": "LoHa's convolution (CP) factor",
                  "lokr_t2": "LoKr's convolution (CP) factor", "oft_embedding_R.weight": "OFT on an embedding"}


def check_options(config: dict[str, Any], source: Path) -> None:
    """Refuse, by name, every option of a LOHA/LOKR/OFT/BOFT config that splice does not compute as peft does."""
    kind = config["peft_type"]
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{source}: bias={config['bias']!r} means peft also trained the base model's biases; "
                              "splice adapters never change base weights. Only bias='none' adapters can be read.")
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise CheckpointError(f"{source}: {field}={config[field]!r} gives some modules their own rank or alpha; "
                                  f"splice's {kind.title()} has one per adapter. Train it without {field}.")
    for key, value in config.items():
        if key in peft_format.INERT or key in _READ[kind] or value in (None, False, {}, [], ""):
            continue
        raise CheckpointError(f"{source}: peft option {key}={value!r} changes what the {kind} adapter computes, and "
                              "splice does not implement it.")


def _modules(tensors: dict[str, torch.Tensor], kind: str, source: Path):
    """The kind's tensors by module path and part name, and the other tensors (a head's)."""
    parts = "|".join(re.escape(p) for p in (*_PARTS[kind], *_REFUSED_PARTS))
    found: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(rf"(?P<module>.+)\.(?P<part>{parts})", key)
        if match is None:
            rest[key] = tensor
        elif match["part"] in _REFUSED_PARTS:
            raise CheckpointError(f"{source}: {key} is {_REFUSED_PARTS[match['part']]}; splice adapts linear "
                                  "projections only.")
        else:
            found.setdefault(match["module"], {})[match["part"]] = tensor
    if not found:
        raise CheckpointError(f"{source} holds no {kind} tensors ({', '.join(_PARTS[kind])}).")
    return found, rest


def _read(kind: str, split: Callable, make: Callable):
    """A reader: each module's parts split over its sites by ``split(sites, parts, module)``, then
    ``make(config, targets, layers, tensors)`` gives the splice config."""

    def read(anatomy: Anatomy, config: dict, tensors: dict[str, torch.Tensor], source: Path):
        found, rest = _modules(tensors, kind, source)
        index = SiteIndex(anatomy, source)
        state, sites = {}, []
        for module, parts in found.items():
            located = index.locate(module)
            for site, own in split(index, located, parts, module, source):
                sites.append(site)
                state.update({f"{site.key}.{part}": tensor for part, tensor in own.items()})
        targets, layers = placement(anatomy, sites, source)
        cls, options = make(config, targets, layers, found)
        return _config(cls, source, **options), state, rest

    return read


def _split_rows(by_row: tuple[str, ...]):
    """Split the ``by_row`` parts of a fused module by its roles' rows; the other parts go to every role."""

    def split(index: SiteIndex, sites, parts, module, source):
        for name in by_row:
            if name in parts:
                index.fused_rows(sites, parts[name].shape[0], module)
        return [(site, {name: rows_of(t, site) if name in by_row else t for name, t in parts.items()})
                for site in sites]

    return split


def _whole(index: SiteIndex, sites, parts, module, source):
    if len(sites) > 1:
        raise CheckpointError(f"{source}: the LoKr of {module!r} spans the fused roles "
                              f"{', '.join(s.role for s in sites)}; a Kronecker product does not split by rows.")
    return [(sites[0], parts)]


def _lycoris(cls, **extra):
    def make(config, targets, layers, found):
        options = {name: config[key] for name, key in extra.items() if key in config}
        if cls is LoKr and config.get("init_weights") == "lycoris":
            options["init"] = "lycoris"
        return cls, dict(r=config.get("r", 8), alpha=config.get("alpha", 8), targets=targets, layers=layers,
                         rank_dropout=config.get("rank_dropout", 0.0),
                         module_dropout=config.get("module_dropout", 0.0), **options)

    return make


def _oft(config, targets, layers, found):
    return OFT, dict(block_size=config.get("oft_block_size", 32) if not config.get("r") else 0,
                     r=config.get("r") or 0, targets=targets, layers=layers,
                     module_dropout=config.get("module_dropout", 0.0), coft=config.get("coft", False),
                     eps=config.get("eps", 6e-5), block_share=config.get("block_share", False),
                     use_cayley_neumann=config.get("use_cayley_neumann", True),
                     num_cayley_neumann_terms=config.get("num_cayley_neumann_terms", 5))


def _boft(config, targets, layers, found):
    factors = {parts["boft_R"].shape[0] for parts in found.values() if "boft_R" in parts}
    if len(factors) != 1:
        raise CheckpointError(f"BOFT modules hold different numbers of butterfly factors: {sorted(factors)}.")
    return BOFT, dict(block_size=config.get("boft_block_size", 4) if not config.get("boft_block_num") else 0,
                      block_num=config.get("boft_block_num") or 0, n_butterfly_factor=factors.pop(),
                      targets=targets, layers=layers, dropout=config.get("boft_dropout", 0.0))


READERS: dict[str, Callable] = {
    "LOHA": _read("LOHA", _split_rows(("hada_w1_a", "hada_w2_a")), _lycoris(LoHa)),
    "LOKR": _read("LOKR", _whole, _lycoris(LoKr, decompose_both="decompose_both",
                                           decompose_factor="decompose_factor",
                                           rank_dropout_scale="rank_dropout_scale")),
    "OFT": _read("OFT", _split_rows(()), _oft),
    "BOFT": _read("BOFT", _split_rows(("boft_s",)), _boft),
}


# -- writing -----------------------------------------------------------------------------------------


def _export(kind: str, options: Callable):
    """A writer: every site's tensors under its module's peft name, and ``options(config)`` for the JSON."""

    def export(anatomy: Anatomy, adapter: Adapter, head) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors, paths = {}, set()
        for path, items in peft_format.by_module(anatomy, adapter, head).items():
            (site, delta), *others = items
            if others or site.columns is not None:
                roles = ", ".join(s.role for s, _ in items)
                raise AdapterError(f"Cannot write {kind} on {path!r} for peft: it is a fused module ({roles}) and "
                                   f"peft's {kind} holds one update per module. Save it with format='splice'.")
            tensors.update({f"{peft_format.PREFIX}{path}.{key}": t.detach().cpu()
                            for key, t in delta.state_dict().items()})
            paths.add(path)
        targets, _ = peft_format.peft_names(anatomy, head, paths, set())
        return {"peft_type": kind, "target_modules": targets, "init_weights": True,
                **options(adapter.config)}, tensors

    return export


def _lycoris_options(config) -> dict:
    options = {"r": config.r, "alpha": config.alpha, "rank_dropout": config.rank_dropout,
               "module_dropout": config.module_dropout, "rank_pattern": {}, "alpha_pattern": {},
               "use_effective_conv2d": False}
    if isinstance(config, LoKr):
        options.update(decompose_both=config.decompose_both, decompose_factor=config.decompose_factor,
                       rank_dropout_scale=config.rank_dropout_scale,
                       init_weights="lycoris" if config.init == "lycoris" else True)
    return options


def _oft_options(config: OFT) -> dict:
    return {"r": config.r, "oft_block_size": config.block_size, "module_dropout": config.module_dropout,
            "coft": config.coft, "eps": config.eps, "block_share": config.block_share,
            "use_cayley_neumann": config.use_cayley_neumann,
            "num_cayley_neumann_terms": config.num_cayley_neumann_terms, "bias": "none", "fan_in_fan_out": False}


def _boft_options(config: BOFT) -> dict:
    return {"boft_block_size": config.block_size, "boft_block_num": config.block_num,
            "boft_n_butterfly_factor": config.n_butterfly_factor, "boft_dropout": config.dropout, "bias": "none",
            "fan_in_fan_out": False}


WRITERS: dict[str, Callable] = {
    "loha": _export("LOHA", _lycoris_options),
    "lokr": _export("LOKR", _lycoris_options),
    "oft": _export("OFT", _oft_options),
    "boft": _export("BOFT", _boft_options),
}
