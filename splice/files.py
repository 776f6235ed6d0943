"""Reading the small JSON files that describe adapters, safely whatever sits at the path.

An adapter folder may come from anyone, over HTTP too (``POST /v1/adapters``), and
its ``adapter.json`` may be a FIFO (an ordinary ``open`` waits forever for a writer,
freezing the caller), a link to ``/dev/zero`` (a read that never ends), gigabytes
of text, or JSON nested 100,000 deep (the parser overflows the stack). Every reader
of ``adapter.json``, ``adapter_config.json``, ``head_config.json`` and the hub's
index goes through :func:`read_json`, which opens without blocking, reads only a
regular file of bounded size, and bounds the nesting depth before parsing.

The path checks (:func:`is_folder`, :func:`exists`) answer False instead of raising
for a path the OS refuses to look up (a component over 255 bytes: ENAMETOOLONG),
so such a path gets the same clear "no adapter folder" refusal as a missing one.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate

from .errors import CheckpointError

MAX_JSON_BYTES = 4 << 20  # adapter configs are a few kB; the largest real ones (long target lists) well under 1 MB
MAX_JSON_DEPTH = 64  # splice's deepest config (a Union's member's pattern) nests 4 levels
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # JSON strings: brackets inside them do not nest
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEPS = {"[": 1, "{": 1, "]": -1, "}": -1}


def is_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (following links); False also for paths the OS cannot look up."""
    return os.path.isdir(path)  # unlike Path.is_dir, never raises (ENAMETOOLONG, NUL bytes, ...)


def exists(path: str | os.PathLike) -> bool:
    """Whether anything (a file, a folder, a FIFO, even a dangling link) is at ``path``; never raises."""
    return os.path.lexists(path)


def read_small_file(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path``, refusing anything else or anything over ``limit`` bytes.

    ``O_NONBLOCK`` makes opening a FIFO return at once (instead of waiting for a
    writer); the type and size are then checked on the opened file itself, so the
    path cannot be swapped between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({_reason(error)}).") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path} is not a regular file (it is a {_kind(info.st_mode)}); an adapter's "
                                  "files must be ordinary files.")
        if info.st_size > limit:
            raise CheckpointError(f"{path} is {info.st_size:,} bytes, more than the {limit:,} a file of its kind "
                                  "can need; it is not an adapter file.")
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):  # + 1: notice a file that grew past the limit after fstat
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise CheckpointError(f"{path} grew past {limit:,} bytes while being read; it is not an adapter file.")
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read ({_reason(error)}).") from error
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> dict:
    """The JSON object in the file ``path``, or a clear :class:`CheckpointError` if it is not one.

    The file is read by :func:`read_small_file`; nesting deeper than ``MAX_JSON_DEPTH``
    is refused before parsing, since Python's parser recurses once per level.
    """
    data = read_small_file(path, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is corrupted.") from error
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} nests {depth:,} levels deep, far beyond any adapter config "
                              f"(at most {MAX_JSON_DEPTH}); it is not an adapter file.")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is corrupted.") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({{...}}), got a {type(value).__name__}.")
    return value


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count)."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub('""', text))
    return max(accumulate(map(_STEPS.__getitem__, brackets)), default=0)


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "folder", stat.S_ISFIFO: "FIFO (named pipe)", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device", stat.S_ISSOCK: "socket"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _reason(error: BaseException) -> str:
    return (error.strerror or str(error)) if isinstance(error, OSError) else str(error)


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "exists", "is_folder", "json_depth", "read_json", "read_small_file"]
