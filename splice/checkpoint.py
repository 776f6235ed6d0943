"""Adapter folders: ``adapter.json`` + ``adapter.safetensors`` + a generated ``README.md``.

Writes are atomic and crash-safe (:mod:`splice.folders`: a staging folder swapped
into place), so an interrupted save never leaves a half-written adapter, nor a
moment without one. Loads read ``adapter.json`` through :func:`splice.files.read_json`
(bounded, never blocking), and check the base fingerprint and every tensor's name
and shape against the file's header before allocating anything or touching the
model, so a bad or hostile folder raises a clear error and leaves the model as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import Adapter, check_name
from .anatomy import quantization_summary
from .errors import AnatomyError, CheckpointError, ConfigError
from .files import exists, read_json
from .folders import recover, write_folder
from .heads import head_from_dict
from .methods import MethodConfig, config_from_dict
from .version import __version__

if TYPE_CHECKING:
    from .model import AdaptedModel

CONFIG_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
FORMAT = "splice-adapter"


def save_adapter(model: "AdaptedModel", name: str, path: str | os.PathLike, training: dict | None = None) -> Path:
    """Write adapter ``name`` of ``model`` to the folder ``path`` (replacing an older save there).

    ``training`` (how the adapter was made: data, metrics, command line; JSON-able) is kept in
    ``adapter.json`` and shown on the model card.
    """
    adapter = model._get(name)
    config, exported = adapter.export()
    meta = {
        "format": FORMAT,
        "splice_version": __version__,
        "name": name,
        "config": config.to_dict(),
        "head": adapter.head_spec(),
        "base": model.anatomy.fingerprint(),
        "parameters": adapter.num_parameters(),
    }
    quantization = quantization_summary(model.base)
    if quantization is not None:  # informational: the adapter loads onto the float base too
        meta["base_quantization"] = quantization
    if training is not None:
        meta["training"] = training
    check_materialised(adapter, name)
    tensors = {key: t.detach().contiguous().cpu() for key, t in exported.items()}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (staging / CARD_FILE).write_text(model_card(meta, os.path.getsize(staging / WEIGHTS_FILE)))

    return write_folder(path, fill, CONFIG_FILE)


def check_materialised(adapter: Adapter, name: str) -> None:
    """Refuse to save an adapter whose tensors have no values (built on the meta device)."""
    if any(t.is_meta for t in adapter.state_dict().values()):
        raise CheckpointError(
            f"Adapter {name!r} lives on the meta device (shapes only, no values) and cannot be saved. "
            "Build the model on a real device, or materialise it with model.to_empty(device='cpu') first."
        )


def load_adapter(model: "AdaptedModel", path: str | os.PathLike, name: str | None = None) -> str:
    """Add the adapter saved in folder ``path`` to ``model``; returns its name."""
    folder = Path(path)
    meta = read_meta(folder)
    name = claim_name(model, name or meta.get("name") or folder.name, folder)
    check_fingerprint(meta.get("base", {}), model.anatomy.fingerprint(), folder)
    try:
        config = config_from_dict(meta["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE} holds an invalid method config: {error}") from error
    weights = folder / WEIGHTS_FILE
    adapter = build_adapter(model, config, meta.get("head"), folder, tensor_shapes(weights), weights)
    install(model, name, adapter, read_tensors(weights, expected=checkpoint_tensors(adapter)))
    return name


def claim_name(model: "AdaptedModel", name: str, folder: Path) -> str:
    """``name`` if it is a valid adapter name that ``model`` does not use yet."""
    check_name(name)
    if name in model.adapters:
        raise CheckpointError(
            f"The model already has an adapter named {name!r}; load under another name with "
            f"model.load({str(folder)!r}, name='...') or delete the existing one first."
        )
    return name


def build_adapter(model: "AdaptedModel", config: MethodConfig, head: dict | str | None, folder: Path,
                  found: Mapping[str, Sequence[int]], source: Path) -> Adapter:
    """A fresh adapter of ``config`` and ``head`` for ``model`` whose tensors are exactly ``found``.

    ``head`` is a splice head's ``to_dict()`` form, the path of a base head module, or
    None; ``found`` maps tensor names to the shapes ``source`` holds. The adapter is
    first built on the meta device (shapes, no memory) and checked against ``found``,
    so a small config that implies huge tensors (``r`` or ``num_labels`` of 10**8) is
    refused before anything is allocated; only a match is built for real.
    """
    with torch.device("meta"):
        check_layout(found, checkpoint_tensors(_build(model, config, head, folder)), source)
    return _build(model, config, head, folder)


def _build(model: "AdaptedModel", config: MethodConfig, head: dict | str | None, folder: Path) -> Adapter:
    try:
        return Adapter(config, model.anatomy, head_from_dict(head) if isinstance(head, dict) else head)
    except (AnatomyError, ConfigError, TypeError) as error:
        raise CheckpointError(f"The adapter in {folder} does not fit this model: {error}") from error


def install(model: "AdaptedModel", name: str, adapter: Adapter, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (checked by :func:`check_layout`) into ``adapter`` and add it to ``model`` as ``name``."""
    with torch.no_grad():
        for key, tensor in checkpoint_tensors(adapter).items():
            tensor.copy_(state[key])
    model._register(name, adapter)


def checkpoint_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under their checkpoint names (``layers.3.ffn.down.weight``, ``head.weight``)."""
    return {key.removeprefix("deltas."): value for key, value in adapter.state_dict(keep_vars=True).items()}


# The entries read_meta checks: JSON type(s), and how a message names them.
_META_TYPES = {"config": (dict, "an object"), "base": (dict, "an object"), "name": (str, "a string"),
               "head": ((dict, str, type(None)), "an object, a string or null")}


def read_meta(folder: Path) -> dict:
    """The ``adapter.json`` of the splice adapter in ``folder``, its entries of the right JSON types."""
    require_folder(folder)
    config_path = folder / CONFIG_FILE
    if not exists(config_path):
        hint = ""
        if exists(folder / "adapter_config.json"):
            hint = " It holds adapter_config.json (a peft or AdapterHub adapter): load it with model.load(folder)."
        raise CheckpointError(f"{folder} is not a splice adapter: {CONFIG_FILE} is missing.{hint}")
    meta = read_json(config_path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a splice adapter config (no \"format\": \"{FORMAT}\").")
    if "config" not in meta:
        raise CheckpointError(f"{config_path} has no \"config\" entry: the method config is missing.")
    for key, (types, expected) in _META_TYPES.items():
        if key in meta and not isinstance(meta[key], types):
            raise CheckpointError(f"{config_path}: \"{key}\" must be {expected}, got {_short(meta[key])}. The "
                                  "file was not written by splice, or was edited by hand; save the adapter again.")
    return meta


def require_folder(folder: Path) -> None:
    """Refuse a ``folder`` that is not there (after putting back a version a killed save had moved aside)."""
    if not recover(folder):
        raise CheckpointError(f"No adapter folder at {folder}.")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fingerprint(saved: dict, current: dict, folder: Path) -> None:
    """Refuse an adapter trained on a base of another shape, naming every difference."""
    diffs = [f"{key}: adapter expects {saved[key]!r}, model has {current.get(key)!r}"
             for key in saved if saved[key] != current.get(key)]
    if diffs:
        raise CheckpointError(
            f"The adapter in {folder} was trained on a different base model ({'; '.join(diffs)}). "
            "Load it into the model it was trained on."
        )


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the safetensors file ``path``, from its header alone (no data read).

    safetensors checks that the header is whole and that its tensors cover the file
    exactly, so a truncated or corrupted file is refused here, with a clear error.
    """
    return _read_safetensors(path, lambda handle, keys: {key: tuple(handle.get_slice(key).get_shape()) for key in keys})


def read_tensors(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read ``path``, checking names and shapes against ``expected`` before returning anything."""

    def read(handle, keys: list[str]) -> dict[str, torch.Tensor]:
        check_layout({key: handle.get_slice(key).get_shape() for key in keys}, expected, path)
        return {key: handle.get_tensor(key) for key in keys}

    return _read_safetensors(path, read)


def _read_safetensors(path: Path, read):
    """``read(handle, keys)`` on the opened safetensors file ``path``, with every failure a CheckpointError."""
    if not exists(path):
        raise CheckpointError(f"{path} is missing: the adapter folder is incomplete.")
    if not os.path.isfile(path):  # a FIFO would block the reader, a device never end
        raise CheckpointError(f"{path} is not a regular file; an adapter's files must be ordinary files.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return read(handle, list(handle.keys()))
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path} is corrupted or truncated ({error}). Save the adapter again.") from error


def check_layout(found: Mapping[str, Sequence[int]], expected: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse tensors (name -> shape) from ``source`` that are not exactly the ones ``expected``."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match this adapter's layout: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. It was written for a different config or model."
        )
    for key in sorted(found):
        if tuple(found[key]) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {list(found[key])}, but the adapter's config on this model "
                f"needs {list(expected[key].shape)}."
            )


def model_card(meta: dict, size: int) -> str:
    config = meta["config"]
    base = meta["base"]
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items() if k != "method")
    head = f"`{meta['head']}`" if meta.get("head") else "none (the base model's own outputs)"
    if isinstance(meta.get("head"), dict):
        head = f"`{meta['head'].get('kind')}`"
    return f"""# {meta['name']}

A **{config['method']}** adapter made with [splice](https://pypi.org/project/splice/) {meta['splice_version']}.

- Trainable parameters: {meta['parameters']:,}
- Size on disk: {size / 1e6:.2f} MB (`{WEIGHTS_FILE}`)
- Base model: `{base.get('model_type')}`, hidden size {base.get('hidden_size')}, {base.get('num_layers')} layers, \
{base.get('num_heads')} heads, vocabulary {base.get('vocab_size')}
- Prediction head: {head}

```python
import splice
model = splice.attach(base_model)
name = model.load("path/to/this/folder")
model.activate(name)
```

| option | value |
|---|---|
{options}
{training_section(meta.get("training"))}"""


def training_section(training: dict | None) -> str:
    """The model card's account of how the adapter was trained (empty if it was not trained by splice train)."""
    if not training:
        return ""
    rows = "\n".join(f"| {key} | `{json.dumps(value) if not isinstance(value, str) else value}` |"
                      for key, value in training.items())
    return f"""
## Training

| | |
|---|---|
{rows}
"""
