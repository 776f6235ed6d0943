"""Where a server finds its adapters at startup: a folder of adapter folders, one adapter folder, or a registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..convert import ADAPTER_CONFIGS
from ..errors import SpliceError
from ..files import exists, is_folder
from ..folders import clean_up
from ..hub import Hub
from ..hub_ids import download, is_hub_id, served_name
from .residency import folder_name

Found = tuple[str, Callable[[], Path]]  # public name, and how to get its folder when it is first used

REGISTRY_WORDS = ("hub", "registry")
RUN_ADAPTER = "adapter"  # where `splice train --out RUN` puts the trained adapter


def is_adapter_folder(folder: Path) -> bool:
    return is_folder(folder) and any(exists(folder / name) for name in ADAPTER_CONFIGS)


def discover(spec: str) -> tuple[list[Found], Hub | None]:
    """The adapters ``spec`` offers, and the registry it names (for ``name@version`` loads at run time).

    ``spec`` is a folder whose sub-folders are adapters (each served under its saved
    name, else the folder's name) or ``splice train`` runs (``RUN/adapter``, served
    as ``RUN``), one adapter folder, a registry root (a folder with the hub's
    ``index.json``: every ``name@version`` in it), ``hub`` for the default registry, or a Hugging Face Hub id
    ``org/name[@revision]`` (served as ``name``).
    Hidden sub-folders (``.name``) are skipped: they hold no adapter of the user's,
    but e.g. the staging folder of a save that was killed (which is cleaned up here).
    """
    if spec in REGISTRY_WORDS:
        return _registry(Hub())
    folder = Path(spec).expanduser()
    if not exists(folder) and is_hub_id(spec):  # one adapter on the Hugging Face Hub
        return [(served_name(spec), lambda: download(spec))], None
    if not is_folder(folder):
        raise SpliceError(f"--adapters {spec!r} is not a folder; pass a folder of adapter folders, one adapter "
                          "folder, a registry folder, or 'hub' for the default registry.")
    if exists(folder / "index.json") and is_folder(folder / "objects"):
        return _registry(Hub(folder))
    if is_adapter_folder(folder):
        return [(folder_name(folder), lambda: folder)], None
    clean_up(folder)
    found: list[Found] = []
    for sub in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if is_adapter_folder(sub):
            found.append((folder_name(sub), (lambda sub=sub: sub)))
        elif is_adapter_folder(sub / RUN_ADAPTER):  # a `splice train` run: served under the run's folder name
            found.append((sub.name, (lambda sub=sub: sub / RUN_ADAPTER)))
    return found, None


def _registry(hub: Hub) -> tuple[list[Found], Hub]:
    return [(entry.ref, (lambda ref=entry.ref: hub.resolve(ref))) for entry in hub.list()], hub
