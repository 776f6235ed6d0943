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
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import Adapter, check_name
from .anatomy import Anatomy, quantization_summary
from .card import model_card
from .errors import AnatomyError, CheckpointError, ConfigError
from .file_names import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from .files import exists, read_json
from .folders import recover, write_folder
from .heads import head_from_dict
from .methods import MethodConfig, config_from_dict
from .version import __version__

FORMAT = "splice-adapter"


def write_adapter(anatomy: Anatomy, adapter: Adapter, name: str, path: str | os.PathLike,
                 training: dict | None = None) -> Path:
    """Write ``adapter`` (called ``name``, fitted to ``anatomy``) to the folder ``path``, replacing an older save.

    ``training`` (how the adapter was made: data, metrics, command line; JSON-able) is kept in
    ``adapter.json`` and shown on the model card.
    """
    config, exported = adapter.export()
    meta = {
        "format": FORMAT,
        "splice_version": __version__,
        "name": name,
        "config": config.to_dict(),
        "head": adapter.head_spec(),
        "base": anatomy.fingerprint(),
        "parameters": adapter.num_parameters(),
    }
    quantization = quantization_summary(anatomy.model)
    if quantization is not None:  # informational: the adapter loads onto the float base too
        meta["base_quantization"] = quantization
    if training is not None:
        meta["training"] = training
    check_materialised(adapter, name)
    tensors = {key: t.detach().contiguous().cpu() for key, t in exported.items()}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        size = os.path.getsize(staging / WEIGHTS_FILE)
        (staging / CARD_FILE).write_text(model_card(meta, size, getattr(anatomy.model, "name_or_path", None)))

    return write_folder(path, fill, CONFIG_FILE)


def check_materialised(adapter: Adapter, name: str) -> None:
    """Refuse to save an adapter whose tensors have no values (built on the meta device)."""
    if any(t.is_meta for t in adapter.state_dict().values()):
        raise CheckpointError(
            f"Adapter {name!r} lives on the meta device (shapes only, no values) and cannot be saved. "
            "Build the model on a real device, or materialise it with model.to_empty(device='cpu') first."
        )


class Contents(NamedTuple):
    """What a reader found in a folder, in splice's terms: a method config, a head, and tensors by checkpoint name."""

    config: MethodConfig
    head: dict | str | None  # a splice head's to_dict() form, the path of a base head module, or None
    shapes: Mapping[str, Sequence[int]]  # tensor name -> shape, known before the tensors are read
    source: Path  # the weights file, named in errors
    tensors: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]  # read them, given the expected

    @classmethod
    def of(cls, config: MethodConfig, head: dict | str | None, state: Mapping[str, torch.Tensor],
           source: Path) -> "Contents":
        """Contents whose tensors are already read (the foreign formats map theirs in memory)."""
        return cls(config, head, {key: t.shape for key, t in state.items()}, source, lambda expected: state)


def load_sequence(anatomy: Anatomy, taken: Container[str], folder: Path, name: str, saved_base: Mapping,
                  read: Callable[[], Contents]) -> tuple[str, Adapter]:
    """The one way every format loads: claim the name, check the base, read, build, check the layout, fill.

    ``taken``: the names in use; ``saved_base``: the fingerprint the folder records (what it has of one);
    ``read``: the format's own reading and mapping. The adapter is built on the meta device and checked
    against what was read before anything is allocated, and is returned for the caller to add: nothing
    here touches a model.
    """
    name = claim_name(taken, name, folder)
    check_fingerprint(dict(saved_base), anatomy.fingerprint(), folder)
    contents = read()
    adapter = build_adapter(anatomy, contents.config, contents.head, folder, contents.shapes, contents.source)
    state = contents.tensors(checkpoint_tensors(adapter))
    with torch.no_grad():
        for key, tensor in checkpoint_tensors(adapter).items():
            tensor.copy_(state[key])
    return name, adapter


def read_adapter(anatomy: Anatomy, taken: Container[str], path: str | os.PathLike,
                 name: str | None = None) -> tuple[str, Adapter]:
    """Read the splice adapter saved in folder ``path`` for ``anatomy``; returns its name and the adapter."""
    folder = Path(path)
    meta = read_meta(folder)

    def read() -> Contents:
        try:
            config = config_from_dict(meta["config"])
        except (ConfigError, TypeError) as error:
            raise CheckpointError(f"{folder / CONFIG_FILE} holds an invalid method config: {error}") from error
        weights = folder / WEIGHTS_FILE
        return Contents(config, meta.get("head"), tensor_shapes(weights), weights,
                        lambda expected: read_tensors(weights, expected=expected))

    return load_sequence(anatomy, taken, folder, name or meta.get("name") or folder.name, meta.get("base", {}), read)


def claim_name(taken: Container[str], name: str, folder: Path) -> str:
    """``name`` if it is a valid adapter name not in ``taken`` yet."""
    check_name(name)
    if name in taken:
        raise CheckpointError(
            f"The model already has an adapter named {name!r}; load under another name with "
            f"model.load({str(folder)!r}, name='...') or delete the existing one first."
        )
    return name


def build_adapter(anatomy: Anatomy, config: MethodConfig, head: dict | str | None, folder: Path,
                  found: Mapping[str, Sequence[int]], source: Path) -> Adapter:
    """A fresh adapter of ``config`` and ``head`` for ``anatomy`` whose tensors are exactly ``found``.

    ``found`` maps tensor names to the shapes ``source`` holds. The adapter is first built on
    the meta device (shapes, no memory) and checked against ``found``, so a small config that
    implies huge tensors (``r`` or ``num_labels`` of 10**8) is refused before anything is
    allocated; only a match is built for real.
    """
    with torch.device("meta"):
        check_layout(found, checkpoint_tensors(_build(anatomy, config, head, folder)), source)
    return _build(anatomy, config, head, folder)


def _build(anatomy: Anatomy, config: MethodConfig, head: dict | str | None, folder: Path) -> Adapter:
    try:
        return Adapter(config, anatomy, head_from_dict(head) if isinstance(head, dict) else head)
    except (AnatomyError, ConfigError, TypeError) as error:
        raise CheckpointError(f"The adapter in {folder} does not fit this model: {error}") from error


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
