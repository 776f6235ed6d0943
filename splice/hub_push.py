"""``model.push_to_hub``: an adapter written in splice's or peft's format, with splice's model card, uploaded
to a Hugging Face Hub repo (:func:`splice.hub_ids.upload`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .adapter import Adapter
from .anatomy import Anatomy
from .checkpoint import CARD_FILE
from .convert import write_as
from .hub_ids import parse_hub_id, upload


def push(anatomy: Anatomy, adapter: Adapter, name: str, repo_id: str, format: str = "splice",
         private: bool | None = None, token: str | None = None, commit_message: str | None = None) -> str:
    """Write ``adapter`` (called ``name``) in ``format`` (splice or peft, as :meth:`AdaptedModel.save` writes
    them) to the Hub repo ``repo_id``, with splice's model card as its README.md; returns the commit's URL."""
    parse_hub_id(repo_id)  # a bad id fails before anything is written
    with tempfile.TemporaryDirectory(prefix="splice-push-") as scratch:
        folder = write_as(anatomy, adapter, name, Path(scratch) / "adapter", format)
        if not (folder / CARD_FILE).exists():  # peft's files have no card: take splice's, which says what it is
            card = write_as(anatomy, adapter, name, Path(scratch) / "card", "splice") / CARD_FILE
            shutil.copyfile(card, folder / CARD_FILE)
        return upload(folder, repo_id, commit_message or f"Upload {name} ({format} format) with splice", private,
                      token)
