"""Replacing a folder atomically, and cleaning up after writers that were killed.

:func:`write_folder` lets its ``fill`` write into a fresh hidden *staging* folder
beside the target (``.NAME.splice-new-<owner>-<random>``), flushes it to disk,
then puts it in the target's place:

- no folder there yet: one ``rename``;
- an older version there: Linux's ``renameat2(RENAME_EXCHANGE)`` swaps the two
  folders in one step, so at every instant the target name holds either the whole
  old version or the whole new one, whatever happens to the writer; the old
  version, now under the staging name, is then removed;
- where the OS or file system cannot swap (macOS, NFS, kernels before 3.15): the
  old version is renamed aside (``.NAME.splice-old-<owner>-<random>``), the new one
  renamed in, the old one removed. A writer killed between those two renames
  leaves no folder under the name; the recovery rule below puts the old one back.

Recovery rule (:func:`clean_up`): hidden entries named as above are splice's; one
is *stale* when its ``<owner>`` (host tag and process id) is this host and that
process no longer runs. A stale aside copy whose folder is missing is renamed back;
every other stale entry is removed. Entries of live writers (a save in progress in
another process, or on another host) are never touched. It runs before every save
into a folder, when a load finds its folder missing (:func:`recover`), and when
``splice serve --adapters`` scans a folder (which skips hidden folders in any case).

Folders and files get the user's umask, as ``mkdir`` and ``open`` give them
(0755 / 0644 under umask 022), not ``tempfile``'s private 0700 / 0600.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError
from .files import exists, is_folder

_HIDDEN = re.compile(r"^\.(?P<name>.+)\.splice-(?P<kind>new|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")
_NAME_MAX = 255  # bytes in one path component on every file system splice runs on
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # from <linux/fs.h>, <fcntl.h>


def write_folder(path: str | os.PathLike, fill: Callable[[Path], None], marker: str) -> Path:
    """Atomically (re)place the folder ``path`` with what ``fill`` writes into a fresh staging folder.

    A folder that holds files but no ``marker`` (the file every such folder has, e.g.
    ``adapter.json``) is not one written here earlier, so it is refused rather than
    overwritten: nothing of the user's is ever replaced.
    """
    target = Path(path)
    clean_up(target.parent)  # also puts back a version a killed writer had moved aside
    if exists(target) and not is_folder(target):
        raise CheckpointError(f"Cannot save to {target}: a file of that name exists. Choose a folder path.")
    if is_folder(target) and os.listdir(target) and not exists(target / marker):
        raise CheckpointError(
            f"Cannot save to {target}: the folder holds other files and no {marker}. "
            "Choose an empty or new folder so nothing of yours is overwritten."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(target)
    try:
        fill(staging)
        _finish(staging)
        _swap_in(staging, target)
    finally:
        if exists(staging):  # a failed fill, or the old version after a swap
            _remove(staging)
    _sync_folder(target.parent)
    return target


def staging_folder(target: Path) -> Path:
    """A new empty hidden folder beside ``target`` (``mkdir`` permissions), named so :func:`clean_up` knows it."""
    for _ in range(100):
        staging = staging_name(target)
        try:
            os.mkdir(staging, 0o777)  # the umask applies, as for any folder the user makes
            return staging
        except FileExistsError:
            continue
    raise CheckpointError(f"Cannot create a staging folder beside {target}; check that its parent is writable.")


def staging_name(target: Path, kind: str = "new") -> Path:
    """A fresh hidden path beside ``target`` for a new version (``new``) or an old one moved aside (``old``)."""
    name = f".{target.name}.splice-{kind}-{_owner()}-{secrets.token_hex(4)}"
    if len(os.fsencode(name)) > _NAME_MAX:
        room = _NAME_MAX - (len(os.fsencode(name)) - len(os.fsencode(target.name)))
        raise CheckpointError(f"Cannot save to {target}: its name is {len(os.fsencode(target.name))} bytes long, "
                              f"and a save needs room for a staging name beside it; use a name of at most "
                              f"{room} bytes.")
    return target.with_name(name)


def clean_up(parent: str | os.PathLike) -> None:
    """Apply the recovery rule to ``parent``'s stale hidden entries (see the module docstring); best effort."""
    parent = Path(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return  # no such folder, or not readable: nothing of ours to clean there
    stale = [match for match in map(_HIDDEN.match, names) if match and _stale(match)]
    for match in sorted(stale, key=lambda m: m["kind"] != "old"):  # asides first, so a missing folder is put back
        entry, target = parent / match.string, parent / match["name"]
        try:
            if match["kind"] == "old" and not exists(target):
                os.rename(entry, target)
            else:
                _remove(entry)
        except OSError:
            pass  # a cleanup never makes a save or a load fail; the next one tries again


def recover(path: str | os.PathLike) -> bool:
    """Whether a folder is at ``path``, after putting back one a killed save had moved aside (see above)."""
    if not is_folder(path):
        clean_up(Path(path).parent)
    return is_folder(path)


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` under ``target``'s name; an old ``target`` ends up at ``staging`` or is removed."""
    if not is_folder(target):
        os.replace(staging, target)
    elif not _exchange(staging, target):
        aside = staging_name(target, "old")
        os.replace(target, aside)
        try:
            os.replace(staging, target)  # killed before this line: clean_up() renames `aside` back
        except OSError:
            os.replace(aside, target)
            raise
        _remove(aside)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False where the OS or the file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@functools.cache
def _renameat2():
    """glibc's (or musl's) ``renameat2``, or None off Linux or with an older C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _owner() -> str:
    """Who writes: this host (a short hash of its name) and this process."""
    return f"{_host_tag()}-{os.getpid()}"


@functools.cache
def _host_tag() -> str:
    return hashlib.sha256(os.uname().nodename.encode() if hasattr(os, "uname") else b"").hexdigest()[:8]


def _stale(match: re.Match) -> bool:
    """Whether the writer that made a hidden entry is gone: same host, and no process of that id runs."""
    if match["host"] != _host_tag() or os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: running, as another user
        return False
    return False


def _finish(staging: Path) -> None:
    """Give every file under ``staging`` the user's umask, and flush files and folders to disk.

    Some writers create their files private (safetensors: 0600); the staging folder was
    made with ``mkdir``'s 0777 less the umask, so its mode less the execute bits is the
    mode a file of the user's gets. The fsyncs make sure a power cut cannot undo the save.
    """
    file_mode = os.stat(staging).st_mode & 0o666
    for root, _, files in os.walk(staging):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fchmod(fd, file_mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_folder(Path(root))


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the files themselves are synced
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["clean_up", "recover", "staging_folder", "staging_name", "write_folder"]
