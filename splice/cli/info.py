"""``splice info ADAPTER [--json]``: what an adapter folder or hub reference is, without loading a model.

splice folders are described from ``adapter.json``; peft and AdapterHub folders
from their ``adapter_config.json`` (as :func:`splice.convert.detect_format`
tells them apart) and the shapes in their weights file. Whether splice can load
a peer adapter into a given model is decided by ``model.load`` / ``splice
convert``, which check every option and tensor against the model.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

from ..file_names import ADAPTERHUB_HEAD_WEIGHTS, ADAPTERHUB_WEIGHTS, PEFT_WEIGHTS
from ..files import exists
from .common import adapter_path, add_command, describe_base, human_size

# The readers below import splice.checkpoint and splice.convert where they are used: those import torch,
# which `splice --help` (it builds this command's parser) must not wait for.

# peft config entries that are bookkeeping, reported elsewhere (base, head) or not at all.
_PEFT_NOT_OPTIONS = {
    "peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode",
    "task_type", "modules_to_save", "runtime_config", "megatron_core", "qalora_group_size",
}


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "info", help="describe an adapter folder or hub reference (no model needed)",
        description="Describe an adapter: format, method and options, the base it fits, parameters, size on disk "
                    "and head. Reads splice, peft and AdapterHub folders, or a hub name@version (looked up in "
                    "$SPLICE_HUB, else ~/.cache/splice/hub, its hashes verified).")
    parser.add_argument("adapter", metavar="ADAPTER_DIR_OR_REF",
                        help="adapter folder (or a splice train run folder), or name@version in the hub")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = describe(adapter_path(args.adapter))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def describe(source: str) -> dict:
    """Facts about the adapter at ``source`` (a folder, a registry ``name@version`` or a Hub id), as JSON values."""
    from ..convert import detect_format
    from ..hub_ids import locate

    folder = locate(source)
    ref = source if folder != Path(source) else None  # a registry or Hugging Face Hub name
    kind = detect_format(folder)  # also refuses a missing folder, or one no library wrote
    report = {"path": str(folder), "ref": ref, "format": kind}
    report.update(_DESCRIBERS[kind](folder))
    files = sorted(p for p in folder.iterdir() if p.is_file())
    report["files"] = [p.name for p in files]
    report["size"] = sum(p.stat().st_size for p in files)
    return report


def _splice(folder: Path) -> dict:
    from ..checkpoint import WEIGHTS_FILE, read_meta

    meta = read_meta(folder)
    config = dict(meta["config"])
    method = config.pop("method", None)
    parameters = _count(folder, (WEIGHTS_FILE,))  # from the file, whose header is checked: a truncated one fails
    return {
        "written_by": f"splice {meta.get('splice_version', '?')}",
        "name": meta.get("name"),
        "method": method,
        "options": config,
        "base": meta.get("base", {}),
        "parameters": parameters,
        "head": meta.get("head"),
    }


def _peft(folder: Path) -> dict:
    from ..convert.detect import FOREIGN_CONFIG, read_json

    config = read_json(folder / FOREIGN_CONFIG)
    mapping = config.get("auto_mapping") or {}
    base = {
        "model_class": mapping.get("base_model_class") if isinstance(mapping, dict) else None,
        "name_or_path": config.get("base_model_name_or_path"),
        "task_type": config.get("task_type"),
    }
    options = {key: value for key, value in config.items() if key not in _PEFT_NOT_OPTIONS and not _unset(value)}
    version = config.get("peft_version")
    return {
        "written_by": f"peft {version}" if version else "peft",
        "name": None,
        "method": str(config.get("peft_type", "?")).lower(),
        "options": options,
        "base": {key: value for key, value in base.items() if value is not None},
        "parameters": _count(folder, PEFT_WEIGHTS),
        "head": {"modules_to_save": config["modules_to_save"]} if config.get("modules_to_save") else None,
    }


def _adapters(folder: Path) -> dict:
    from ..convert.detect import FOREIGN_CONFIG, HEAD_CONFIG, read_json

    meta = read_json(folder / FOREIGN_CONFIG)
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    architecture = config.get("architecture")
    if architecture == "lora" and config.get("composition_mode") == "scale":
        method = "ia3"  # AdapterHub's (IA)3 is a LoRA config with composition_mode "scale"
    elif architecture:
        method = architecture
    else:
        method = "bottleneck" if "reduction_factor" in config else "?"
    options = {key: value for key, value in config.items() if key != "architecture" and value is not None}
    base = {key: meta[key] for key in ("model_type", "hidden_size", "model_class", "model_name") if meta.get(key)}
    head, parameters = None, _count(folder, ADAPTERHUB_WEIGHTS)
    if (folder / HEAD_CONFIG).is_file():
        head_config = read_json(folder / HEAD_CONFIG).get("config")
        head = {"kind": "static head" if head_config is None else
                (head_config.get("head_type", "flex head") if isinstance(head_config, dict) else str(head_config))}
        if any((folder / name).is_file() for name in ADAPTERHUB_HEAD_WEIGHTS):
            parameters += _count(folder, ADAPTERHUB_HEAD_WEIGHTS)
    version = str(meta.get("version", ""))
    return {
        "written_by": version.replace("adapters.", "adapters ", 1) if version else "adapters",
        "name": meta.get("name"),
        "method": method,
        "options": options,
        "base": base,
        "parameters": parameters,
        "head": head,
    }


def _unset(value) -> bool:
    """peft's way of leaving an option off: None, False or an empty container (but 0 and 0.0 are values)."""
    return value is None or value is False or (isinstance(value, (dict, list, str)) and not value)


_DESCRIBERS = {"splice": _splice, "peft": _peft, "adapters": _adapters}


def _count(folder: Path, names: tuple[str, ...]) -> int:
    """Elements in the first of ``names`` present in ``folder``: safetensors from its header, .bin weights-only."""
    from ..checkpoint import tensor_shapes
    from ..convert.weights import read_weights

    path = next((folder / name for name in names if exists(folder / name)), None)
    if path is not None and path.suffix == ".safetensors":
        return sum(math.prod(shape) for shape in tensor_shapes(path).values())
    _, tensors = read_weights(folder, names)  # a clear error when no file is there; .bin read weights-only
    return sum(t.numel() for t in tensors.values())


def render(report: dict) -> str:
    """The report as aligned ``field  value`` lines."""
    head = report["head"]
    if isinstance(head, dict):
        head = ", ".join(f"{value}" if key == "kind" else f"{key} {value}" for key, value in head.items())
    files = report["files"]
    fields = [
        ("adapter", report["ref"] or report["path"]),
        ("stored at", report["path"] if report["ref"] else None),
        ("format", f"{report['format']} (written by {report['written_by']})"),
        ("name", report["name"]),
        ("method", report["method"]),
        ("options", ", ".join(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                              for key, value in report["options"].items()) or "-"),
        ("base", describe_base(report["base"])),
        ("parameters", f"{report['parameters']:,}" if report["parameters"] is not None else "?"),
        ("head", head or "none"),
        ("size", f"{human_size(report['size'])} in {len(files)} file{'s' * (len(files) != 1)} ({', '.join(files)})"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    lines = []
    for label, value in fields:
        if value is None:
            continue
        wrapped = textwrap.wrap(str(value), 100 - width, break_on_hyphens=False) or [""]
        lines.append(label.ljust(width) + wrapped[0])
        lines += [" " * width + more for more in wrapped[1:]]
    return "\n".join(lines)
