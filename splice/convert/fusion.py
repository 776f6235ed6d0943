"""AdapterHub AdapterFusion folders (``adapter_fusion_config.json`` + weights) read as splice Fusion adapters.

What ``adapters`` 1.3.0 (``BertFusion``, ``compose_fuse``) computes at a location where
sequential bottlenecks ``i`` read ``a`` (``N(h + x)``, ``h + x`` or ``h``) and add
``u_i = s_i·up_i(act(down_i(a)))`` to the sublayer output ``h``:

    q = Wq·(a, or h with query_before_ln) + bq,   k_i = Wk·c_i + bk,   v_i = Wv·c_i  (no bias)
    c_i = u_i (residual_before=False)  or  u_i + h (residual_before=True)
    out = sum_i softmax_i(q · k_i / T) v_i  (+ h when residual_before=False)

and the block goes on with ``N(out + x)``. That is splice's ``Fusion(query_from="adapter_input"
| "output", attend="deltas" | "outputs")`` with a zero value bias; ``key``/``query``/``value``
set to false are identity projections. The fused adapters must already be loaded under the
names the fusion lists (``model.load`` their AdapterHub folders first).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..adapter import Adapter
from ..anatomy import Anatomy, site_key
from ..checkpoint import Contents, load_sequence
from ..errors import CheckpointError
from ..file_names import FUSION_WEIGHTS
from ..methods import Bottleneck, Fusion
from .detect import FUSION_CONFIG, read_json
from .options import refuse_unknown
from .weights import read_weights

_KEY = re.compile(
    r"\.(?P<layer>\d+)\.(?P<where>attention\.output|output|attention_adapters|output_adapters)\.adapter_fusion_layer\."
    r"(?P<fusion>[^.]+)\.(?P<module>query|key|value|dense)\.(?P<param>weight|bias)$"
)
# Options that do not change what a trained fusion computes in inference.
_INERT = {
    "regularization": "a training loss pulling the value matrix towards the identity",
    "value_initialized": "how the value matrix starts",
    "dropout_prob": "dropout on the attention scores, off in inference",
    "value_before_softmax": "whether the value matrix is applied before or after mixing (the same linear map)",
}
_KNOWN = {"key", "query", "value", "query_before_ln", "residual_before", "temperature", *_INERT}


def is_fusion_folder(folder: Path) -> bool:
    return (folder / FUSION_CONFIG).is_file()


def read_fusion(anatomy: Anatomy, adapters: Mapping[str, Adapter], folder: Path,
                name: str | None = None) -> tuple[str, Adapter]:
    """The AdapterHub AdapterFusion in ``folder`` as a splice Fusion over ``adapters`` (the model's): name, adapter.

    Everything is checked before anything is built.
    """
    source = folder / FUSION_CONFIG
    meta = read_json(source)
    options, fused = meta.get("config"), meta.get("adapter_names")
    if not isinstance(options, dict):
        raise CheckpointError(f"{source} has no \"config\" object: the fusion's options are missing.")
    if not isinstance(fused, list) or len(fused) < 2 or not all(isinstance(a, str) for a in fused):
        raise CheckpointError(f"{source}: \"adapter_names\" must list the fused adapters (two or more).")
    _check(options, source)
    residual = _check_fused(adapters, fused, source)
    saved_base = {key: meta[key] for key in ("model_type", "hidden_size") if key in meta}
    return load_sequence(anatomy, adapters, folder, name or "fusion_" + "_".join(fused), saved_base,
                         lambda: _read(anatomy, adapters, folder, options, fused, residual))


def _read(anatomy: Anatomy, adapters: Mapping[str, Adapter], folder: Path, options: dict, fused: list[str],
          residual: bool) -> Contents:
    """The fusion's config and tensors, mapped to splice's sites."""
    source = folder / FUSION_CONFIG
    weights_path, tensors = read_weights(folder, FUSION_WEIGHTS)
    stacks = [stack for stack, blocks in anatomy.blocks.items() if blocks]
    if len(stacks) != 1:
        raise CheckpointError(f"{source}: AdapterHub fusions are read for single-stack models only.")
    features = anatomy.hidden_size
    state, roles, layers = {}, set(), set()
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise CheckpointError(f"{weights_path} holds {key!r}, which is not an AdapterFusion tensor "
                                  "(<block>...adapter_fusion_layer.<names>.query/key/value...).")
        if match["module"] == "dense":  # built when query, key and value are all off, and never used
            continue
        role = "attn" if match["where"].startswith("attention") else "ffn"
        role = f"{role}_residual" if residual else role
        roles.add(role)
        layers.add(int(match["layer"]))
        state[f"{site_key(stacks[0], int(match['layer']), role)}.{match['module']}.{match['param']}"] = tensor
    if not state:
        raise CheckpointError(f"{weights_path} holds no fusion tensors.")
    for layer in layers:  # projections switched off are identities; the value has no bias
        for role in roles:
            prefix = site_key(stacks[0], layer, role) + "."
            for module in ("query", "key", "value"):
                if not options.get(module, True):
                    extra = sorted(k for k in state if k.startswith(prefix + module + "."))
                    if extra:
                        raise CheckpointError(f"{weights_path} holds {extra[0]} although {module}=false.")
                    state[prefix + f"{module}.weight"] = torch.eye(features)
                    state[prefix + f"{module}.bias"] = torch.zeros(features)
            state.setdefault(prefix + "value.bias", torch.zeros(features))
    for adapter in fused:  # AdapterHub puts a fusion layer only where every fused adapter has a bottleneck
        keys = (site_key(stacks[0], layer, role) for layer in layers for role in roles)
        missing = sorted(key for key in keys if key not in adapters[adapter].sites)
        if missing:
            raise CheckpointError(f"{weights_path} fuses at {missing[0]}, where adapter {adapter!r} has no bottleneck.")
    count = len(anatomy.blocks[stacks[0]])
    config = Fusion(
        adapters=tuple(fused), roles=tuple(sorted(roles, key=("attn", "ffn", "attn_residual", "ffn_residual").index)),
        temperature=1.0, query_from="output" if options.get("query_before_ln") else "adapter_input",
        attend="outputs" if options.get("residual_before") else "deltas",
        layers=None if sorted(layers) == list(range(count)) else tuple(sorted(layers)),
    )
    return Contents.of(config, None, state, weights_path)


def _check(options: dict, source: Path) -> None:
    refuse_unknown(options, source, "AdapterHub AdapterFusion", _KNOWN)
    if options.get("temperature"):
        raise CheckpointError(
            f"{source}: option temperature=true is not implemented by splice: AdapterHub starts the softmax "
            "temperature at 50 and lowers it by 0.05 on every forward call, so its outputs depend on how many "
            "calls came before."
        )


def _check_fused(adapters: Mapping[str, Adapter], fused: list[str], source: Path) -> bool:
    """The fused adapters are loaded sequential bottlenecks reading the same input; whether they read the residual."""
    absent = [a for a in fused if a not in adapters]
    if absent:
        raise CheckpointError(
            f"{source} fuses {fused}, but the model has no adapter named {', '.join(map(repr, absent))}. Load the "
            "fused adapters first (model.load(<their AdapterHub folders>, name=...)) under these names."
        )
    configs = [adapters[a].config for a in fused]
    for adapter, config in zip(fused, configs):
        if not isinstance(config, Bottleneck):
            raise CheckpointError(f"{source}: fused adapter {adapter!r} is not a bottleneck adapter.")
        if config.parallel:
            raise CheckpointError(
                f"{source}: fused adapter {adapter!r} is parallel (par_bn); AdapterHub fuses parallel adapters "
                "with the residual stream as query and residual, which splice does not implement."
            )
        if config.ln_after:
            raise CheckpointError(
                f"{source}: fused adapter {adapter!r} has ln_after; AdapterHub's fusion mixes the up-projection "
                "before that norm, which splice does not implement."
            )
    if len({config.residual_input for config in configs}) != 1:
        raise CheckpointError(f"{source}: the fused adapters read different inputs (seq_bn and double_seq_bn "
                              "mixed); AdapterHub feeds them all the last one's, which splice does not implement.")
    return configs[0].residual_input
