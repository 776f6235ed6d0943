"""Adapters in other libraries' formats: recognise a folder, read it, or write one.

``model.load(path)`` and ``model.save(name, path, format=...)`` come here:
splice's own folders go to :mod:`splice.checkpoint`, ``peft`` folders to
:mod:`.peft` (read and write), AdapterHub folders to :mod:`.adapters` (read), :mod:`.bottleneck`
(bottleneck read and write) and :mod:`.fusion` (AdapterFusion read).
A ``name@version`` that is not a folder is looked up in the local hub, an ``org/name`` on the
Hugging Face Hub (:mod:`splice.hub_ids`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import CONFIG_FILE, load_adapter, save_adapter
from ..errors import AdapterError
from ..files import exists, is_folder
from ..hub_ids import locate
from .adapters import load_adapters
from .bottleneck import save_adapters
from .detect import detect_format
from .fusion import is_fusion_folder, load_fusion
from .peft import load_peft, save_peft

if TYPE_CHECKING:
    from ..model import AdaptedModel

ADAPTER_CONFIGS = (CONFIG_FILE, "adapter_config.json")

READERS = {"splice": load_adapter, "peft": load_peft, "adapters": load_adapters}
WRITERS = {"splice": save_adapter, "peft": save_peft, "adapters": save_adapters}


def load_any(model: AdaptedModel, path: str | os.PathLike, name: str | None = None) -> str:
    """Add the adapter at ``path`` (a splice, peft or AdapterHub folder, a local-registry ``name@version``,
    or a Hugging Face Hub id ``org/name[@revision]``: see :func:`splice.hub_ids.locate`).

    Returns its name.
    """
    folder = locate(path)
    if is_folder(folder) and is_fusion_folder(folder) and not any(exists(folder / f) for f in ADAPTER_CONFIGS):
        return load_fusion(model, folder, name)  # an AdapterHub AdapterFusion (its fused adapters loaded first)
    return READERS[detect_format(folder)](model, folder, name)


def save_as(model: AdaptedModel, name: str, path: str | os.PathLike, format: str = "splice") -> Path:
    """Write adapter ``name`` to folder ``path`` in ``format`` (``"splice"``, ``"peft"`` or ``"adapters"``)."""
    if format not in WRITERS:
        raise AdapterError(
            f"Unknown format {format!r}: splice writes {', '.join(WRITERS)}."
        )
    return WRITERS[format](model, name, path)


__all__ = ["detect_format", "load_adapters", "load_any", "load_fusion", "load_peft", "save_adapters", "save_as",
           "save_peft"]
