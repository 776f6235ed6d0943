"""AdapterHub's format (the ``adapters`` library): read LoRA and (IA)³ adapters.

A folder holds ``adapter_config.json`` (``{"config": {...}, "model_type",
"hidden_size", "name", "version": "adapters.…"}``) and ``pytorch_adapter.bin``
(read with ``torch.load(weights_only=True)``) or ``adapter.safetensors``, with
tensors named ``<module path>.loras.<name>.lora_A`` / ``lora_B``; optionally a
static head (``head_config.json`` with ``"config": null`` and
``pytorch_model_head.bin`` / ``model_head.safetensors``).

In ``adapters``, LoRA with ``composition_mode="add"`` computes
``y + (alpha / r) · B A x`` (splice LoRA); ``"scale"`` computes
``y · (alpha · lora_B)`` ((IA)³: splice IA3 on the outputs). Its DoRA and VeRA
variants (``use_dora``, ``vera_d`` / ``vera_b``) are read in :mod:`.adapters_lora_variants`. On a fused
projection (GPT-2 ``c_attn``) each matrix of ``attn_matrices`` has its own
block of ``A`` rows and ``B`` rows, which become splice's per-role sites.
Where the adapter lives (``selfattn_lora``, ``intermediate_lora``,
``output_lora``, ``attn_matrices``, ``leave_out``) is recorded by the tensor
names, from which splice reads the sites. Bottleneck adapters are read in
:mod:`.bottleneck`, prefix and prompt tuning in :mod:`.adapters_soft`.
"""

from __future__ import annotations

import re
from collections.abc import Container
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter import Adapter
from ..anatomy import Site
from ..checkpoint import Contents, load_sequence
from ..errors import CheckpointError
from ..file_names import ADAPTERHUB_HEAD_WEIGHTS, ADAPTERHUB_WEIGHTS
from . import adapters_lora_variants, adapters_methods, adapters_soft
from .bottleneck import bottleneck_from, is_bottleneck
from .detect import FOREIGN_CONFIG, HEAD_CONFIG, read_json
from .mapping import LoRAPiece, SiteIndex, head_state, ia3_from_vectors, lora_from_pieces
from .options import refuse_unknown
from .weights import read_weights

if TYPE_CHECKING:
    from ..anatomy import Anatomy


# LoRAConfig options splice honours (placement ones via the tensor names; initialisation and
# dtype do not change what a trained adapter computes).
# (use_dora, vera_d and vera_b by adapters_lora_variants; vera_b / vera_d are starting values of VeRA's scalings).
_HONOURED = {
    "architecture", "r", "alpha", "dropout", "composition_mode", "selfattn_lora", "intermediate_lora",
    "output_lora", "attn_matrices", "leave_out", "init_weights", "init_weights_seed", "dtype", "use_dora",
    "vera_d", "vera_b",
}
_REFUSED = {
    "use_gating": "a learned gate on the LoRA output (UniPELT)",
}
_KEY = re.compile(r"(?P<module>.+)\.loras\.(?P<name>[^.]+)\.(?P<param>lora_A|lora_B|m\.weight|vera_D|vera_B)")


def read_adapterhub(anatomy: Anatomy, taken: Container[str], folder: Path,
                    name: str | None = None) -> tuple[str, Adapter]:
    """The AdapterHub adapter in ``folder`` (bottleneck, LoRA, (IA)³, prefix) for ``anatomy``: its name and adapter.

    Everything is checked (options, base, module names, shapes) before anything is built.
    """
    source = folder / FOREIGN_CONFIG
    meta = read_json(source)
    options = meta.get("config")
    if not isinstance(options, dict):
        raise CheckpointError(f"{source} has no \"config\" object: the adapter's options are missing.")
    other = adapters_methods.handles(options)  # Compacter, ReFT, invertible adapters
    bottleneck = not other and is_bottleneck(options)
    soft = options.get("architecture") in adapters_soft.ARCHITECTURES
    if other:
        pass  # adapters_methods checks its own options
    elif soft:
        adapters_soft.check_options(anatomy, options, source)
    elif not bottleneck:
        _check_options(options, source)
    saved_base = {key: meta[key] for key in ("model_type", "hidden_size") if key in meta}

    def read() -> Contents:
        weights_path, tensors = read_weights(folder, ADAPTERHUB_WEIGHTS)
        if other:
            method, state = adapters_methods.method_from(anatomy, options, tensors, "version" in meta, weights_path)
        elif bottleneck:
            method, state = bottleneck_from(anatomy, options, tensors, "version" in meta, weights_path)
        elif soft:
            if options["architecture"] == "prompt_tuning":
                method, state = adapters_soft.prompt_from(options, tensors, weights_path)
            else:
                method, state = adapters_soft.prefix_from(anatomy, options, tensors, "version" in meta, weights_path)
        else:
            shared, tensors = adapters_lora_variants.shared_of(tensors)
            modules = _group(tensors, weights_path)
            alpha = _alpha(meta, options)
            if adapters_lora_variants.handles(options):
                method, state = adapters_lora_variants.variant_from(anatomy, modules, shared, options, alpha,
                                                                    weights_path)
            elif options.get("composition_mode", "add") == "scale":
                method, state = _ia3(anatomy, modules, options, alpha, weights_path)
            else:
                method, state = _lora(anatomy, modules, options, options.get("r", 8), alpha, weights_path)
        head, head_tensors = _head(anatomy, folder)
        return Contents.of(method, head, {**state, **head_tensors}, weights_path)

    return load_sequence(anatomy, taken, folder, name or meta.get("name") or folder.name, saved_base, read)


def _check_options(options: dict, source: Path) -> None:
    """Refuse, by name, every architecture and option splice does not implement."""
    architecture = options.get("architecture")
    if architecture != "lora":
        raise CheckpointError(
            f"{source} holds architecture {architecture!r}; splice reads AdapterHub bottleneck, LoRA and (IA)3 "
            "adapters so far."
        )
    switched_off = {key: value for key, value in options.items() if key not in _REFUSED or value not in (None, False)}
    refuse_unknown(switched_off, source, "AdapterHub lora", _HONOURED, _REFUSED)
    mode = options.get("composition_mode", "add")
    if mode not in ("add", "scale"):
        raise CheckpointError(f"{source}: composition_mode {mode!r} is unknown; adapters defines 'add' and 'scale'.")
    if mode == "scale" and (options.get("r", 8) != 1 or options.get("dropout", 0.0)):
        raise CheckpointError(f"{source}: composition_mode 'scale' ((IA)3) needs r=1 and no dropout.")
    if mode == "scale" and adapters_lora_variants.handles(options):
        raise CheckpointError(f"{source}: composition_mode 'scale' ((IA)3) with use_dora or vera_d / vera_b is "
                              "not an adapter adapters can build (its DoRA and VeRA layers add).")


def _alpha(meta: dict, options: dict) -> float:
    """The alpha ``adapters`` uses: it reads files of releases before 1.1.0 (a faulty LoRA scaling) with alpha = r."""
    version = str(meta.get("version", ""))
    match = re.fullmatch(r"adapters\.(\d+)\.(\d+).*", version)
    if match and (int(match[1]), int(match[2])) < (1, 1):
        return options.get("r", 8)
    return options.get("alpha", 8)


def _group(tensors: dict[str, torch.Tensor], source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors by adapted module: ``{module path: {"lora_A": ..., "lora_B": ...}}``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    names = set()
    for key, tensor in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(
                f"{source} holds {key!r}, which is not a LoRA tensor (<module>.loras.<name>.lora_A / lora_B, or "
                "DoRA's m.weight, VeRA's vera_D / vera_B); splice does not know what it belongs to."
            )
        names.add(match["name"])
        modules.setdefault(match["module"], {})[match["param"]] = tensor
    if len(names) > 1:
        raise CheckpointError(f"{source} mixes tensors of several adapters ({', '.join(sorted(names))}).")
    if not modules:
        raise CheckpointError(f"{source} holds no tensors.")
    return modules


def _parts(index: SiteIndex, module: str, options: dict, source: Path) -> list[Site]:
    """The sites of ``module`` that the adapter adapts, in the order of its blocks of rows.

    A fused q/k/v projection holds one block per matrix of ``attn_matrices``, in q, k, v order.
    """
    sites = index.locate(module)
    if len(sites) == 1:
        return sites
    by_role = {site.role: site for site in sites}
    enabled = [m for m in ("q", "k", "v") if m in options.get("attn_matrices", ["q", "v"])]
    if set(by_role) != {"q", "k", "v"} or not enabled:
        raise CheckpointError(
            f"{source}: {module!r} is a fused projection of roles {', '.join(by_role)}; splice reads AdapterHub "
            "LoRA on fused modules only for q/k/v with attn_matrices among them."
        )
    return [by_role[m] for m in enabled]


def _blocks(tensor: torch.Tensor, sizes: list[int], what: str, source: Path) -> list[torch.Tensor]:
    if tensor.dim() != 2 or tensor.shape[0] != sum(sizes):
        raise CheckpointError(f"{source}: {what} has shape {list(tensor.shape)}, expected {sum(sizes)} rows.")
    return list(torch.split(tensor, sizes))


def _lora(anatomy: Anatomy, modules: dict, options: dict, r: int, alpha: float, source: Path):
    index = SiteIndex(anatomy, source)
    pieces = []
    for module, params in modules.items():
        if set(params) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{source}: the LoRA of {module!r} needs both lora_A and lora_B.")
        sites = _parts(index, module, options, source)
        As = _blocks(params["lora_A"], [r] * len(sites), f"{module}.lora_A", source)
        Bs = _blocks(params["lora_B"], [site.out_features for site in sites], f"{module}.lora_B", source)
        pieces += [LoRAPiece(site, A, B.contiguous(), alpha) for site, A, B in zip(sites, As, Bs)]
    return lora_from_pieces(anatomy, pieces, source, r=r, alpha=alpha, dropout=options.get("dropout", 0.0),
                            use_rslora=False)


def _ia3(anatomy: Anatomy, modules: dict, options: dict, alpha: float, source: Path):
    index = SiteIndex(anatomy, source)
    vectors = {}
    for module, params in modules.items():
        if set(params) != {"lora_B"}:
            raise CheckpointError(f"{source}: the (IA)3 vector of {module!r} must be a lone lora_B.")
        sites = _parts(index, module, options, source)
        Bs = _blocks(params["lora_B"], [site.out_features for site in sites], f"{module}.lora_B", source)
        vectors.update({site: B.reshape(-1) * alpha for site, B in zip(sites, Bs)})
    return ia3_from_vectors(anatomy, vectors, set(), source)


def _head(anatomy: Anatomy, folder: Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """A static head saved beside the adapter (the model's own head module, retrained), as a splice head."""
    if not (folder / HEAD_CONFIG).is_file():
        return None, {}
    config = read_json(folder / HEAD_CONFIG)
    if config.get("config") is not None:
        kind = config["config"].get("head_type") if isinstance(config["config"], dict) else config["config"]
        raise CheckpointError(
            f"{folder / HEAD_CONFIG} describes an AdapterHub flex head ({kind!r}), which splice does not build. "
            f"Move {HEAD_CONFIG} and the head weights out of the folder to load the adapter alone."
        )
    path, tensors = read_weights(folder, ADAPTERHUB_HEAD_WEIGHTS)
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors.")
    parts = [key.split(".") for key in tensors]
    depth = 0  # the head module: the longest dotted prefix every tensor name shares, short of a parameter name
    while depth < min(len(p) for p in parts) - 1 and len({p[depth] for p in parts}) == 1:
        depth += 1
    if depth == 0:
        raise CheckpointError(f"{path} holds tensors of several modules ({', '.join(tensors)}); "
                              "splice reads a head that is one module.")
    module = ".".join(parts[0][:depth])
    params = {".".join(p[depth:]): tensors[".".join(p)] for p in parts}
    return head_state((name for name, _ in anatomy.model.named_modules()), module, params, path)
