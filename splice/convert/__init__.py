"""Adapter folders in every format: recognise a folder, read it into an Adapter, or write one.

``model.load(path)`` and ``model.save(name, path, format=...)`` come here:
splice's own folders go to :mod:`splice.checkpoint`, ``peft`` folders to
:mod:`.peft` (read and write), AdapterHub folders to :mod:`.adapters` (read), :mod:`.bottleneck`
(bottleneck read and write) and :mod:`.fusion` (AdapterFusion read).
A ``name@version`` that is not a folder is looked up in the local hub, an ``org/name`` on the
Hugging Face Hub (:mod:`splice.hub_ids`).

Readers and writers see an anatomy and the adapter table, never the model: a reader returns
the adapter it built (the model adds it), a writer is handed the adapter to write.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..adapter import Adapter
from ..anatomy import Anatomy
from ..checkpoint import CONFIG_FILE, read_adapter, write_adapter
from ..errors import AdapterError
from ..files import exists, is_folder
from ..hub_ids import locate
from .adapters import read_adapterhub
from .bottleneck import write_adapterhub
from .detect import FOREIGN_CONFIG, detect_format
from .fusion import is_fusion_folder, read_fusion
from .peft import read_peft
from .peft_write import write_peft

ADAPTER_CONFIGS = (CONFIG_FILE, FOREIGN_CONFIG)

READERS = {"splice": read_adapter, "peft": read_peft, "adapters": read_adapterhub}
WRITERS = {"splice": write_adapter, "peft": write_peft, "adapters": write_adapterhub}


def read_any(anatomy: Anatomy, adapters: Mapping[str, Adapter], path: str | os.PathLike,
             name: str | None = None) -> tuple[str, Adapter]:
    """The adapter at ``path`` (a splice, peft or AdapterHub folder, a local-registry ``name@version``, or a
    Hugging Face Hub id ``org/name[@revision]``: see :func:`splice.hub_ids.locate`) for ``anatomy``.

    ``adapters``: the model's, whose names are taken (and which an AdapterFusion fuses). Returns the
    name and the adapter, for the caller to add.
    """
    folder = locate(path)
    if holds_fusion(folder):
        return read_fusion(anatomy, adapters, folder, name)  # AdapterHub AdapterFusion (fused adapters loaded)
    return READERS[detect_format(folder)](anatomy, adapters, folder, name)


def holds_fusion(folder: Path) -> bool:
    """Whether ``folder`` is an AdapterHub AdapterFusion (and not an adapter that a fusion file sits beside)."""
    return is_folder(folder) and is_fusion_folder(folder) and not any(exists(folder / f) for f in ADAPTER_CONFIGS)


def write_as(anatomy: Anatomy, adapter: Adapter, name: str, path: str | os.PathLike,
             format: str = "splice") -> Path:
    """Write ``adapter`` (called ``name``) to folder ``path`` in ``format`` (splice, peft or adapters)."""
    if format not in WRITERS:
        raise AdapterError(
            f"Unknown format {format!r}: splice writes {', '.join(WRITERS)}."
        )
    return WRITERS[format](anatomy, adapter, name, path)


__all__ = ["detect_format", "holds_fusion", "read_adapterhub", "read_any", "read_fusion", "read_peft",
           "write_adapterhub", "write_as", "write_peft"]
