"""A local adapter registry: splice adapter folders stored by ``name@version``, content-addressed.

    hub = Hub()                                    # ~/.cache/splice/hub, or $SPLICE_HUB, or Hub(root)
    ref = hub.push("out/sentiment", "sentiment")   # "sentiment@<first 12 hex of the content digest>"
    model.load("sentiment@1.0")                    # resolved through the hub, hashes verified
    hub.pull(ref, "somewhere/else"); hub.list(); hub.rm(ref)

Layout of the root: ``objects/<digest>/`` holds one adapter folder, where the
digest is the sha256 of its manifest (file name -> sha256 of the file), so the
same content pushed twice is stored once; ``index.json`` maps names and
versions to manifests. Every read of a stored adapter re-hashes its files and
refuses one that changed. Writers take an exclusive ``flock`` on
``index.lock`` and replace ``index.json`` atomically, so concurrent pushes
never lose or corrupt entries; readers need no lock. (``fcntl``: POSIX only.)

A push refuses an adapter whose weights file is truncated or corrupted. What a
killed writer leaves behind (a push's staging folder, an index being written, an
object stored but never indexed) is removed by the next push or ``rm``, under the
lock, by the rule of :mod:`splice.folders`: only splice's own entries, and only
those whose writer is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import AdapterError, CheckpointError
from .files import exists, read_json
from .folders import clean_up, staging_folder, staging_name, write_folder

# The helpers this module takes from .adapter and .checkpoint are imported where they are used: those
# modules import torch (seconds), and listing the hub (`splice hub list`) needs none of it.

ENV_VAR = "SPLICE_HUB"
DEFAULT_ROOT = "~/.cache/splice/hub"
INDEX_FORMAT = "splice-hub"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_REFERENCE = re.compile(r"^(?P<name>[^@/\\]+)@(?P<version>[^@/\\]+)$")
_CHUNK = 1 << 20
_INDEX_LIMIT = 256 << 20  # index.json: a few hundred bytes per stored version
_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # the names of objects/ folders


def is_reference(text: str) -> bool:
    """Whether ``text`` has the shape of a hub reference ``name@version`` (not whether it exists)."""
    return bool(_REFERENCE.match(text))


def parse_reference(ref: str) -> tuple[str, str]:
    """``(name, version)`` of ``"name@version"``, both validated so neither can escape the hub's folder."""
    match = _REFERENCE.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise AdapterError(f"{ref!r} is not a hub reference; write it as 'name@version', e.g. 'sentiment@1.0'.")
    from .adapter import check_name  # (see the note on imports above)

    return check_name(match["name"]), check_version(match["version"])


def check_version(version: str) -> str:
    """Versions are labels, never paths: letters, digits and ``. _ + -``, starting with a letter or digit."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise AdapterError(
            f"Invalid version {version!r}: use 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter "
            "or digit (no slashes, spaces or '@'), e.g. '1.0' or '2024-05-01'."
        )
    return version


@dataclass(frozen=True)
class HubEntry:
    """One stored adapter, as :meth:`Hub.list` reports it."""

    name: str
    version: str
    method: str
    base: dict
    size: int
    created: str
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Hub:
    """A directory-backed store of splice adapters (``root``: argument, else ``$SPLICE_HUB``, else the default)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser()
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.json"

    # -- public API ------------------------------------------------------------------------------
    def push(self, folder: str | os.PathLike, name: str, version: str | None = None) -> str:
        """Copy the splice adapter ``folder`` in as ``name@version``; returns the reference.

        ``version`` defaults to the first 12 hex digits of the content digest. A
        version, once pushed, never changes: pushing other content under it is refused
        (pushing the same content again is a no-op).
        """
        from .adapter import check_name
        from .checkpoint import WEIGHTS_FILE, read_meta, tensor_shapes

        check_name(name)
        if version is not None:
            check_version(version)
        source = Path(folder)
        meta = read_meta(source)
        files = _adapter_files(source)
        self.objects.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(self.objects / "push")
        try:
            manifest = {path.name: _copy_hashed(path, staging / path.name) for path in files}
            tensor_shapes(staging / WEIGHTS_FILE)  # refuses a truncated or corrupted copy before it is stored
            digest = _digest(manifest)
            version = version or digest[:12]
            with self._locked():
                index = self._read_index()
                self._clean_up(index)
                versions = index["adapters"].setdefault(name, {})
                if version in versions:
                    if versions[version]["digest"] != digest:
                        raise CheckpointError(
                            f"{name}@{version} is already in the hub at {self.root} with other content; versions "
                            "never change. Push under a new version, or remove the old one with rm() first."
                        )
                    return f"{name}@{version}"
                self._store(staging, digest, manifest)
                versions[version] = {
                    "digest": digest,
                    "files": manifest,
                    "method": meta.get("config", {}).get("method"),
                    "base": meta.get("base", {}),
                    "size": sum(path.stat().st_size for path in files),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                self._write_index(index)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return f"{name}@{version}"

    def resolve(self, ref: str) -> Path:
        """The stored folder of ``ref`` after checking every file's sha256 (what ``model.load(ref)`` reads)."""
        record = self._record(ref)
        folder = self.objects / record["digest"]
        for file, expected in record["files"].items():
            _check_hash(ref, folder / file, _hash_file(folder / file), expected)
        self._check_listing(ref, folder, record)
        return folder

    def pull(self, ref: str, dest: str | os.PathLike) -> Path:
        """Copy the adapter ``ref`` to the folder ``dest`` (atomically), verifying every byte copied."""
        from .checkpoint import CONFIG_FILE

        record = self._record(ref)
        folder = self.objects / record["digest"]
        self._check_listing(ref, folder, record)

        def fill(staging: Path) -> None:
            for file, expected in record["files"].items():
                _check_hash(ref, folder / file, _copy_hashed(folder / file, staging / file), expected)

        return write_folder(dest, fill, CONFIG_FILE)

    def list(self) -> list[HubEntry]:
        """Every stored adapter: name, version, method, base fingerprint, size in bytes, creation time (UTC)."""
        index = self._read_index()
        return [
            HubEntry(name, version, record.get("method"), record.get("base", {}), record.get("size", 0),
                     record.get("created", ""), record["digest"])
            for name, versions in sorted(index["adapters"].items())
            for version, record in sorted(versions.items())
        ]

    def rm(self, ref: str) -> None:
        """Remove ``ref`` from the hub (and its files, unless another reference has the same content)."""
        name, version = parse_reference(ref)
        with self._locked():
            index = self._read_index()
            record = index["adapters"].get(name, {}).pop(version, None)
            if record is None:
                raise CheckpointError(self._missing(ref))
            if not index["adapters"][name]:
                del index["adapters"][name]
            self._write_index(index)
            self._clean_up(index)  # removes the object too, unless another reference has the same content

    # -- internals -------------------------------------------------------------------------------
    def _record(self, ref: str) -> dict:
        name, version = parse_reference(ref)
        record = self._read_index()["adapters"].get(name, {}).get(version)
        if record is None:
            raise CheckpointError(self._missing(ref))
        return record

    def _missing(self, ref: str) -> str:
        return f"No adapter {ref} in the hub at {self.root}; Hub().list() shows what is there."

    def _check_listing(self, ref: str, folder: Path, record: dict) -> None:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if found != sorted(record["files"]):
            raise CheckpointError(
                f"The stored files of {ref} ({folder}) were changed: the hub recorded {sorted(record['files'])}, "
                f"the folder holds {found}. Remove it with rm('{ref}') and push it again."
            )

    def _store(self, staging: Path, digest: str, manifest: dict[str, str]) -> None:
        """Move ``staging`` to ``objects/<digest>``, unless an intact copy of the same content is there already."""
        target = self.objects / digest
        if target.is_dir():
            intact = sorted(p.name for p in target.iterdir()) == sorted(manifest) and all(
                _hash_file(target / file) == sha for file, sha in manifest.items())
            if intact:
                return
            shutil.rmtree(target)
        os.replace(staging, target)

    def _clean_up(self, index: dict) -> None:
        """With the lock held: remove what killed writers left, and objects no index entry refers to."""
        clean_up(self.root)
        clean_up(self.objects)
        used = {record["digest"] for versions in index["adapters"].values() for record in versions.values()}
        try:
            stored = [name for name in os.listdir(self.objects) if _DIGEST.match(name)]
        except OSError:
            return
        for digest in stored:
            if digest not in used:
                shutil.rmtree(self.objects / digest, ignore_errors=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the hub's exclusive write lock (an ``flock`` on ``index.lock``)."""
        import fcntl  # POSIX only; imported here so that model.load() of a folder works everywhere

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "index.lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _read_index(self) -> dict:
        if not exists(self.index_path):
            return {"format": INDEX_FORMAT, "adapters": {}}
        index = read_json(self.index_path, _INDEX_LIMIT)
        if index.get("format") != INDEX_FORMAT:
            raise CheckpointError(f"{self.index_path} is not a splice hub index (no \"format\": \"{INDEX_FORMAT}\").")
        return index

    def _write_index(self, index: dict) -> None:
        """Replace ``index.json`` atomically: write a temporary file, flush it to disk, rename it over."""
        temp = staging_name(self.index_path)
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(index, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.index_path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


def _adapter_files(folder: Path) -> list[Path]:
    """The files of an adapter folder, which must all be plain files (no links, no subfolders)."""
    files = sorted(folder.iterdir())
    odd = [p.name for p in files if p.is_symlink() or not p.is_file()]
    if odd:
        raise CheckpointError(
            f"{folder} holds {odd}, which are not plain files; the hub stores flat adapter folders "
            "(adapter.json, adapter.safetensors, README.md). Save the adapter to a fresh folder and push that."
        )
    return files


def _copy_hashed(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target``; returns the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _hash_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(ref: str, path: Path, found: str | None, expected: str) -> None:
    if found != expected:
        state = "is missing" if found is None else f"has sha256 {found[:16]}…, the hub recorded {expected[:16]}…"
        raise CheckpointError(
            f"The stored file {path.name} of {ref} {state}: it was tampered with or corrupted, so splice refuses "
            f"it. Remove it with rm('{ref}') and push the adapter again."
        )


def _digest(manifest: dict[str, str]) -> str:
    """The content address of a folder: sha256 of its manifest (file name -> file sha256), canonically encoded."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
