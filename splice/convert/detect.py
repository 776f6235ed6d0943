"""Telling the three adapter formats apart by the files in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..checkpoint import require_folder
from ..errors import CheckpointError
from ..file_names import CONFIG_FILE, FOREIGN_CONFIG, FUSION_CONFIG, HEAD_CONFIG  # noqa: F401 - the readers' names
from ..files import exists, read_json

Format = Literal["splice", "peft", "adapters"]


def detect_format(folder: str | Path) -> Format:
    """Which library wrote the adapter in ``folder``: ``"splice"``, ``"peft"`` or ``"adapters"`` (AdapterHub).

    splice folders hold ``adapter.json``; peft and AdapterHub both write
    ``adapter_config.json``, told apart by its ``peft_type`` (peft) or its
    ``"version": "adapters.…"`` (AdapterHub).
    """
    folder = Path(folder)
    require_folder(folder)
    if exists(folder / CONFIG_FILE):  # not yet whether it is readable: the reader says what is wrong with it
        return "splice"
    if not exists(folder / FOREIGN_CONFIG):
        if exists(folder / FUSION_CONFIG):
            raise CheckpointError(
                f"{folder} holds an AdapterHub AdapterFusion layer ({FUSION_CONFIG}), not an adapter: load the "
                "fused adapters first, then the fusion with model.load(folder)."
            )
        if exists(folder / HEAD_CONFIG):
            raise CheckpointError(
                f"{folder} holds only an AdapterHub prediction head ({HEAD_CONFIG}), no adapter; point "
                "splice at the folder that has adapter_config.json."
            )
        raise CheckpointError(
            f"{folder} is not an adapter folder: it has neither {CONFIG_FILE} (splice) nor {FOREIGN_CONFIG} "
            "(peft or AdapterHub)."
        )
    config = read_json(folder / FOREIGN_CONFIG)
    if "peft_type" in config:
        return "peft"
    if str(config.get("version", "")).startswith("adapters.") or isinstance(config.get("config"), dict):
        return "adapters"
    raise CheckpointError(
        f"{folder / FOREIGN_CONFIG} is neither a peft config (no \"peft_type\") nor an AdapterHub config "
        "(no \"version\": \"adapters.…\"); splice cannot tell which library wrote it."
    )
