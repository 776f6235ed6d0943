"""Saves that survive ``kill -9``: the adapter folder's name always holds a whole version, what a killed
writer leaves is hidden, never served, and cleaned up later (only splice's own leftovers, only stale ones),
and everything is written with the user's umask. The kills are real: child processes stopped with SIGKILL
in the middle of a save, of the fallback swap, and of a hub push."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import splice
from splice import Bottleneck, LoRA
from splice.hub import Hub
from splice.serve.sources import discover

from tiny_models import tiny_model

TESTS = Path(__file__).resolve().parent
CHILD_START_LIMIT = 300  # seconds for a child to import torch and reach the stalling point, on a busy machine

# Each child saves (or pushes) with one step slowed down: it does that step, touches MARKER and sleeps,
# so the parent can SIGKILL it exactly there.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import splice, splice.checkpoint, splice.hub
    from tiny_models import tiny_model

    mode, target, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def stall():
        marker.touch()
        time.sleep(600)

    if mode == "push":
        real_copy = splice.hub._copy_hashed
        def copy_then_stall(source, copy):
            digest = real_copy(source, copy)
            stall()
        splice.hub._copy_hashed = copy_then_stall
        splice.hub.Hub(target).push(sys.argv[4], "pushed", "1.0")
    model = splice.attach(tiny_model("bert"))
    model.add("new", splice.Bottleneck(r=2))
    if mode == "write":  # killed halfway through writing the new weights
        real_save = splice.checkpoint.save_file
        def half_then_stall(tensors, path, metadata=None):
            real_save(tensors, path, metadata=metadata)
            os.truncate(path, os.path.getsize(path) // 2)
            stall()
        splice.checkpoint.save_file = half_then_stall
    if mode == "swap":  # no exchange (macOS, NFS): killed after moving the old version aside
        import splice.folders
        splice.folders._exchange = lambda first, second: False
        real_replace = os.replace
        def replace_then_stall(source, destination):
            real_replace(source, destination)
            if Path(source) == target:
                stall()
        splice.folders.os.replace = replace_then_stall
    model.save("new", target)
""")


def killed_children(jobs: dict[str, list[str]], tmp: Path) -> None:
    """Run one CHILD per job (mode -> arguments) at once; SIGKILL each when it stalls."""
    code = CHILD.format(tests=str(TESTS))
    children = {}
    for mode, args in jobs.items():
        marker = tmp / f"{mode}.stalled"
        children[mode] = (subprocess.Popen([sys.executable, "-c", code, mode, args[0], str(marker), *args[1:]]),
                          marker)
    deadline = time.monotonic() + CHILD_START_LIMIT
    try:
        for mode, (child, marker) in children.items():
            while not marker.exists():
                assert child.poll() is None, f"the {mode} child exited early ({child.returncode})"
                assert time.monotonic() < deadline, f"the {mode} child never reached its stalling point"
                time.sleep(0.1)
            child.send_signal(signal.SIGKILL)
    finally:
        for child, _ in children.values():
            if child.poll() is None:
                child.kill()
            child.wait(timeout=60)
    for mode, (child, _) in children.items():
        assert child.returncode == -signal.SIGKILL, f"the {mode} child was not killed mid-save"


def save_old(folder: Path) -> None:
    model = splice.attach(tiny_model("bert"))
    model.add("old", LoRA(r=4))
    model.save("old", folder)


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """Three children killed mid-way: a save writing its weights over ``write/sent``, a fallback save between
    its two renames over ``swap/sent``, and a hub push copying files into ``hub``."""
    root = tmp_path_factory.mktemp("crashed")
    for mode in ("write", "swap"):
        save_old(root / mode / "sent")
    save_old(root / "pushed")
    killed_children({"write": [str(root / "write" / "sent")], "swap": [str(root / "swap" / "sent")],
                     "push": [str(root / "hub"), str(root / "pushed")]}, root)
    return root


# -- killed saves --------------------------------------------------------------------------------------------


def test_save_killed_while_writing_keeps_the_old_version(crashed):
    parent = crashed / "write"
    assert len(hidden(parent)) == 1  # the killed save's staging folder
    assert splice.attach(tiny_model("bert")).load(parent / "sent") == "old"

    # serving the folder offers the real adapter only, and the stale staging folder is cleaned up
    found, _ = discover(str(parent))
    assert [name for name, _ in found] == ["old"]
    assert hidden(parent) == []


def test_save_killed_between_the_renames_is_recovered_on_load(crashed):
    """Without an atomic exchange the old version is moved aside first; a kill right then leaves no folder
    under the name, and the next load puts the old version back."""
    parent = crashed / "swap"
    assert not (parent / "sent").exists()
    assert sorted(name.split(".splice-")[1][:3] for name in hidden(parent)) == ["new", "old"]

    assert splice.attach(tiny_model("bert")).load(parent / "sent") == "old"
    assert hidden(parent) == []
    assert json.loads((parent / "sent" / "adapter.json").read_text())["name"] == "old"


def aside(folder: Path, pid: int) -> Path:
    """Where a save by process ``pid`` moves the old ``folder`` aside when it cannot exchange the two."""
    return folder.with_name(leftover(folder.name, pid).replace(".splice-new-", ".splice-old-"))


def test_the_server_and_discovery_recover_a_folder_moved_aside(tmp_path):
    from splice.serve.residency import Residency

    for parent in ("served", "discovered"):
        save_old(tmp_path / parent / "sent")
        (tmp_path / parent / "sent").rename(aside(tmp_path / parent / "sent", dead_pid()))
    residency = Residency(splice.attach(tiny_model("bert")))
    try:
        assert residency.load(str(tmp_path / "served" / "sent")).result(timeout=120) == "old"
    finally:
        residency.close()
    found, _ = discover(str(tmp_path / "discovered"))
    assert [name for name, _ in found] == ["old"]
    assert hidden(tmp_path / "served") == hidden(tmp_path / "discovered") == []


def test_next_save_cleans_up_after_killed_ones(tmp_path):
    save_old(tmp_path / "sent")
    for name in ("sent", "other"):  # what killed saves of this folder and of another one left
        (tmp_path / leftover(name, dead_pid())).mkdir()
    model = splice.attach(tiny_model("bert"))
    model.add("fresh", Bottleneck(r=2))
    model.save("fresh", tmp_path / "sent")
    assert hidden(tmp_path) == []
    assert splice.attach(tiny_model("bert")).load(tmp_path / "sent") == "fresh"


def test_push_killed_while_copying_is_cleaned_up_by_the_next(crashed):
    hub = Hub(crashed / "hub")
    objects = crashed / "hub" / "objects"
    assert len(hidden(objects)) == 1  # the killed push's staging folder
    assert hub.list() == []
    ref = hub.push(crashed / "pushed", "pushed", "1.0")
    assert hidden(objects) == [] and hidden(crashed / "hub") == []
    assert splice.attach(tiny_model("bert")).load(hub.resolve(ref)) == "old"


# -- no moment without an adapter -------------------------------------------------------------------------


def test_every_rename_of_a_save_leaves_a_whole_adapter_in_place(tmp_path, monkeypatch):
    """Replacing a saved adapter must never pass through a state with no folder under its name (a reader,
    or a kill, at that moment would find nothing): after every rename a save makes, the folder is whole."""
    target = tmp_path / "sent"
    save_old(target)
    model = splice.attach(tiny_model("bert"))
    model.add("new", Bottleneck(r=2))
    real_replace, real_rename = os.replace, os.rename

    def checked(real):
        def rename(source, destination):
            real(source, destination)
            assert (target / "adapter.json").is_file(), f"no adapter at {target} after renaming {source}"
        return rename

    monkeypatch.setattr(os, "replace", checked(real_replace))
    monkeypatch.setattr(os, "rename", checked(real_rename))
    model.save("new", target)
    monkeypatch.undo()
    assert splice.attach(tiny_model("bert")).load(target) == "new"
    assert hidden(tmp_path) == []


# -- cleaning up only what is ours and stale ---------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(name: str, pid: int) -> str:
    """The hidden name a save of ``name`` by process ``pid`` on this host stages in."""
    from splice.folders import _host_tag

    return f".{name}.splice-new-{_host_tag()}-{pid}-0123abcd"


def test_clean_up_removes_only_stale_leftovers_of_splice(tmp_path):
    from splice.folders import clean_up

    live = leftover("a", os.getpid())  # a save in progress in this process
    stale = leftover("b", dead_pid())
    elsewhere = f".c.splice-new-0000beef-{dead_pid()}-0123abcd"  # another host: its writer may be running
    users = [".git", ".cache", ".d.splice-new-notours"]
    for name in (live, stale, elsewhere, *users):
        (tmp_path / name).mkdir()
    stale_file = leftover("index.json", dead_pid())
    (tmp_path / stale_file).write_text("{")
    clean_up(tmp_path)
    assert hidden(tmp_path) == sorted([live, elsewhere, *users])


def test_discovery_skips_hidden_folders(tmp_path):
    """A hidden folder holding a whole adapter (a save in progress elsewhere, or anything else hidden) is
    not served; before, its adapter.json's name shadowed or duplicated the real adapter's."""
    save_old(tmp_path / "sent")
    save_old(tmp_path / f".sent.splice-new-0000beef-{os.getpid()}-0123abcd")  # another host's save in progress
    save_old(tmp_path / ".backup")
    found, _ = discover(str(tmp_path))
    assert [name for name, _ in found] == ["old"]
    assert found[0][1]() == tmp_path / "sent"


# -- permissions ------------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """Set the process umask for one test (and put the previous one back)."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def modes(folder: Path) -> set[str]:
    return {oct(folder.stat().st_mode & 0o777)} | {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}


@pytest.mark.parametrize("mask, folder_mode, file_mode", [(0o022, "0o755", "0o644"), (0o077, "0o700", "0o600")])
def test_saves_and_the_hub_follow_the_umask(tmp_path, umask, mask, folder_mode, file_mode):
    umask(mask)
    save_old(tmp_path / "sent")
    assert oct((tmp_path / "sent").stat().st_mode & 0o777) == folder_mode
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "sent").iterdir()} == {file_mode}

    hub = Hub(tmp_path / "hub")
    hub.push(tmp_path / "sent", "sent", "1.0")
    (stored,) = (tmp_path / "hub" / "objects").iterdir()
    assert oct(stored.stat().st_mode & 0o777) == folder_mode
    assert oct((tmp_path / "hub" / "index.json").stat().st_mode & 0o777) == file_mode
    pulled = hub.pull("sent@1.0", tmp_path / "pulled")
    assert modes(pulled) == {folder_mode, file_mode}
