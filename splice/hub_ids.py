"""Adapters named by a Hugging Face Hub id (``org/name``, pinned as ``org/name@revision``), and where any
adapter source is on disk.

:func:`locate` is the one place a source becomes a folder: an existing folder as it is, a
``name@version`` of splice's local registry (:mod:`splice.hub`) through it, and a Hub id through
``huggingface_hub.snapshot_download`` — only the files an adapter folder can hold (splice, peft and
AdapterHub formats; ``allow_patterns``), into the user's Hugging Face cache, with the user's token
(``HF_TOKEN`` or ``huggingface-cli login``). ``HF_HUB_OFFLINE=1`` reads the cache only; an id that is
neither a local folder nor cached then fails with one line saying so.

Tested offline only, against a cache laid out as ``huggingface_hub`` lays it out
(``models--org--name/refs/main``, ``snapshots/<commit>/...``); downloading was not tried from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError
from .files import exists

# Every file name splice reads from an adapter folder, in any sub-folder (AdapterHub fusions hold one per adapter).
ADAPTER_FILES = (
    "adapter.json", "adapter.safetensors", "README.md",                      # splice
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",  # peft
    "pytorch_adapter.bin", "head_config.json", "pytorch_model_head.bin", "model_head.safetensors",  # AdapterHub
    "adapter_fusion_config.json", "pytorch_model_adapter_fusion.bin", "model_adapter_fusion.safetensors",
)
ALLOW_PATTERNS = [f"*{name}" for name in ADAPTER_FILES]
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
                     r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_./-]{0,127}))?$")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` has the shape of a Hub id ``org/name`` or ``org/name@revision`` (not whether it exists)."""
    return bool(_HUB_ID.match(source)) and ".." not in source


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``org/name[@revision]``; revision ``None`` means the default branch."""
    match = _HUB_ID.match(source) if is_hub_id(source) else None
    if match is None:
        raise CheckpointError(f"{source!r} is not a Hugging Face Hub id; write it as org/name or org/name@revision.")
    return match["repo"], match["revision"]


def download(source: str, token: str | bool | None = None) -> Path:
    """The local snapshot of Hub adapter ``source`` (downloaded into the HF cache unless it is there)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as error:
        raise CheckpointError(f"Loading {source} from the Hugging Face Hub needs huggingface_hub: "
                              "pip install huggingface_hub.") from error
    repo, revision = parse_hub_id(source)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS, token=token,
                                   local_files_only=offline)
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{source} is neither a local folder nor in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set: unset it to download)." if offline else
               ", and the Hub could not be reached; check the network or the id.")) from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"The Hugging Face Hub refused {source}: {str(error).splitlines()[0]} "
                              "(a private repo needs HF_TOKEN or `hf auth login`).") from None
    return Path(folder)


def locate(source: str | os.PathLike) -> Path:
    """The folder ``source`` names: a local folder, a local-registry ``name@version``, or a Hub id."""
    from .hub import Hub, is_reference

    folder = Path(source)
    if exists(folder):
        return folder
    text = os.fspath(source)
    if is_reference(text):
        return Hub().resolve(text)
    if is_hub_id(text):
        return download(text)
    return folder  # the reader refuses it, naming the path


def served_name(source: str) -> str:
    """The name a server gives Hub adapter ``org/name[@revision]`` unless told another: ``name``, made a
    valid adapter name (adapter names hold no slashes)."""
    repo, _ = parse_hub_id(source)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", repo.split("/", 1)[1])[:128].strip("-") or "adapter"


def upload(folder: Path, repo_id: str, message: str, private: bool | None = None, token: str | None = None) -> str:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if missing, default branch); the commit's URL."""
    from huggingface_hub import HfApi

    repo, revision = parse_hub_id(repo_id)
    if revision is not None:
        raise CheckpointError(f"push_to_hub writes to a repo's default branch; drop '@{revision}' from {repo_id!r}.")
    api = HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message=message)
    return str(getattr(info, "commit_url", info))
