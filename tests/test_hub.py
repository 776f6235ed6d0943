"""The local adapter hub: push / list / pull / load / rm round trips, content addressing,
tamper detection, name validation (no path traversal), and concurrent pushes from many processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch

import splice
from splice import AdapterError, CheckpointError, LoRA
from splice.hub import ENV_VAR, Hub, parse_reference

from helpers import main_output, perturb
from tiny_models import tiny_inputs, tiny_model


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.Tensor]:
    """A bert LoRA saved at tmp_path/'lora', and the output it gives."""
    model = splice.attach(tiny_model("bert"))
    model.add("lora", LoRA(r=2))
    perturb(model.adapters["lora"], seed=1)
    model.activate("lora")
    model.save("lora", tmp_path / "lora")
    return tmp_path / "lora", main_output(model, tiny_inputs("bert"))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Hub:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "hub"))
    return Hub()


def variant(folder: Path, where: Path, text: str) -> Path:
    """A copy of ``folder`` whose README differs: same adapter, other content (so another digest)."""
    shutil.copytree(folder, where)
    (where / "README.md").write_text(text)
    return where


# -- round trips --------------------------------------------------------------------------------------------


def test_push_list_pull_load(hub, saved, tmp_path):
    folder, out = saved
    assert hub.root == tmp_path / "hub"  # $SPLICE_HUB wins over the default
    ref = hub.push(folder, "sentiment", "1.0")
    assert ref == "sentiment@1.0"

    (row,) = hub.list()
    assert (row.name, row.version, row.method, row.ref) == ("sentiment", "1.0", "lora", ref)
    assert row.base["model_type"] == "bert"
    assert row.size == sum(p.stat().st_size for p in folder.iterdir())
    assert row.created.endswith("+00:00")

    pulled = hub.pull(ref, tmp_path / "pulled")
    assert sorted(p.name for p in pulled.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert all((pulled / p.name).read_bytes() == p.read_bytes() for p in folder.iterdir())

    model = splice.attach(tiny_model("bert"))
    name = model.load("sentiment@1.0")  # not a folder: resolved through the hub
    model.activate(name)
    assert torch.equal(main_output(model, tiny_inputs("bert")), out)


def test_root_argument_and_default(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert Hub().root == Path("~/.cache/splice/hub").expanduser()
    assert Hub(tmp_path / "mine").root == tmp_path / "mine"


def test_content_addressing_and_immutable_versions(hub, saved, tmp_path):
    folder, _ = saved
    ref = hub.push(folder, "a")
    name, version = parse_reference(ref)
    assert name == "a" and len(version) == 12  # default version: the content digest's prefix
    assert hub.push(folder, "a") == ref  # the same content again: nothing new
    hub.push(folder, "b", "1")  # the same content under another name: stored once
    assert len(list((hub.root / "objects").iterdir())) == 1
    assert len(hub.list()) == 2

    other = variant(folder, tmp_path / "other", "changed")
    with pytest.raises(CheckpointError, match="versions never change"):
        hub.push(other, "b", "1")
    assert hub.push(other, "b", "2") == "b@2"


def test_rm(hub, saved, tmp_path):
    folder, _ = saved
    hub.push(folder, "a", "1")
    hub.push(folder, "b", "1")
    hub.push(variant(folder, tmp_path / "v", "other"), "b", "2")
    hub.rm("a@1")
    assert [row.ref for row in hub.list()] == ["b@1", "b@2"]
    assert len(list((hub.root / "objects").iterdir())) == 2  # b@1 still uses the shared content
    hub.rm("b@1")
    hub.rm("b@2")
    assert hub.list() == [] and list((hub.root / "objects").iterdir()) == []
    with pytest.raises(CheckpointError, match="No adapter b@2"):
        hub.rm("b@2")
    with pytest.raises(CheckpointError, match="No adapter"):
        splice.attach(tiny_model("bert")).load("b@2")


# -- tampering ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["edit", "delete", "add"])
def test_tampered_files_are_refused(hub, saved, tmp_path, tamper):
    folder, _ = saved
    ref = hub.push(folder, "x", "1")
    stored = hub.objects / next(p.name for p in hub.objects.iterdir())
    if tamper == "edit":
        weights = stored / "adapter.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif tamper == "delete":
        (stored / "README.md").unlink()
    else:
        (stored / "extra.bin").write_bytes(b"\0")

    model = splice.attach(tiny_model("bert"))
    with pytest.raises(CheckpointError, match="tampered|were changed|missing"):
        model.load(ref)
    assert list(model.adapters) == []
    with pytest.raises(CheckpointError, match="tampered|were changed|missing"):
        hub.pull(ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


# -- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "a b", "", "..", ".hidden", "x@y", "a\\b"])
def test_bad_names_are_rejected(hub, saved, tmp_path, name):
    folder, _ = saved
    with pytest.raises(AdapterError):
        hub.push(folder, name, "1")
    assert not hub.root.exists() or hub.list() == []
    assert {p.name for p in tmp_path.iterdir()} <= {"hub", "lora"}  # nothing written beside the hub


@pytest.mark.parametrize("version", ["../x", "/abs", "a/b", "a b", "", ".hidden", "1@2", "-1"])
def test_bad_versions_are_rejected(hub, saved, version):
    folder, _ = saved
    with pytest.raises(AdapterError):
        hub.push(folder, "x", version)
    with pytest.raises(AdapterError):
        hub.pull(f"x@{version}", hub.root / "out")


def test_only_flat_splice_folders_are_pushed(hub, saved, tmp_path):
    folder, _ = saved
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="not a splice adapter"):
        hub.push(tmp_path / "peft", "x", "1")
    nested = variant(folder, tmp_path / "nested", "x")
    (nested / "sub").mkdir()
    with pytest.raises(CheckpointError, match="not plain files"):
        hub.push(nested, "x", "1")
    linked = variant(folder, tmp_path / "linked", "x")
    os.symlink(tmp_path / "lora" / "README.md", linked / "link.md")
    with pytest.raises(CheckpointError, match="not plain files"):
        hub.push(linked, "x", "1")
    assert hub.list() == []


# -- concurrency ----------------------------------------------------------------------------------------------


def _push_many(args: tuple[str, str, int]) -> list[str]:
    """Run in a worker process: push four versions of one name, the shared version, and a racing version."""
    root, base, worker = args
    hub, results = Hub(root), []
    for j in range(4):
        results.append(hub.push(Path(base) / f"w{worker}-{j}", "shared-name", f"w{worker}.{j}"))
    results.append(hub.push(Path(base) / "common", "shared-name", "common"))
    try:
        results.append(hub.push(Path(base) / f"w{worker}-0", "shared-name", "race"))
    except CheckpointError:
        results.append("lost")
    return results


def test_concurrent_pushes_keep_the_index_whole(hub, saved, tmp_path):
    folder, _ = saved
    workers = 6
    for w in range(workers):
        for j in range(4):
            variant(folder, tmp_path / "src" / f"w{w}-{j}", f"worker {w} push {j}")
    variant(folder, tmp_path / "src" / "common", "common")
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # Linux (CI); a real race between processes
        results = pool.map(_push_many, [(str(hub.root), str(tmp_path / "src"), w) for w in range(workers)])

    refs = {row.ref for row in hub.list()}
    assert refs == {f"shared-name@w{w}.{j}" for w in range(workers) for j in range(4)} | {
        "shared-name@common", "shared-name@race"}
    assert sum(r[-1] == "shared-name@race" for r in results) == 1  # one racer wins, the rest are refused
    assert len(list(hub.objects.iterdir())) == workers * 4 + 1  # the winner's content is one of the w*-0
    for ref in refs:
        hub.resolve(ref)  # every stored version is intact
    assert not [p for p in hub.root.iterdir() if p.name.startswith(".index-")]  # no temporary files left
