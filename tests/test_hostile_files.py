"""Adapter folders built to hurt: a FIFO or /dev/zero as adapter.json, huge or deeply nested JSON, NaN and
absurd options, configs that imply gigabytes, over-long paths, truncated weights. Each is refused with one
clear error, in Python (CheckpointError / ConfigError), in the CLI (``error:`` line, exit code 2) and in
the server (4xx), quickly, without blocking, without allocating, and with the model untouched."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import splice
from splice import Bottleneck, CheckpointError, ConfigError, LoRA, heads
from splice.cli import main
from splice.hub import Hub
from splice.serve.residency import folder_name

from serving import encoder_app
from tiny_models import tiny_model

LONG = "x" * 300  # one path component longer than any file system allows (255 bytes): ENAMETOOLONG


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A bert Bottleneck(r=4) adapter with a 3-label classification head."""
    folder = tmp_path_factory.mktemp("good") / "adapter"
    model = splice.attach(tiny_model("bert"))
    model.add("good", Bottleneck(r=4), head=heads.Classification(num_labels=3))
    model.save("good", folder)
    return folder


def copy(good: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of ``good``, its adapter.json changed by ``edit(meta)``."""
    folder = tmp_path / "copy"
    shutil.copytree(good, folder)
    if edit is not None:
        meta = json.loads((folder / "adapter.json").read_text())
        edit(meta)
        (folder / "adapter.json").write_text(json.dumps(meta))
    return folder


def refused_load(folder, *words: str) -> str:
    """``model.load(folder)`` raises one CheckpointError naming ``words``, and adds nothing to the model."""
    model = splice.attach(tiny_model("bert"))
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    assert list(model.adapters) == []
    for word in words:
        assert word in str(info.value), str(info.value)
    return str(info.value)


def within(seconds: float, call):
    """``call()``'s result, failing (instead of hanging the suite) if it takes longer than ``seconds``."""
    result: dict = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test below
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture
def fifo_folder(good, tmp_path):
    """An adapter folder whose adapter.json is a FIFO; a reader blocked on it is released at the end."""
    folder = copy(good, tmp_path)
    (folder / "adapter.json").unlink()
    os.mkfifo(folder / "adapter.json")
    yield folder
    try:  # a reader still waiting on the FIFO (a failing test) gets end-of-file instead of hanging forever
        os.close(os.open(folder / "adapter.json", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv] + ["-q"])
    return code, capsys.readouterr().err


def cli_refused(capsys, *argv, words: tuple[str, ...] = ()) -> None:
    code, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


# -- what sits at adapter.json ---------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(fifo_folder, capsys):
    within(30, lambda: refused_load(fifo_folder, "adapter.json", "FIFO"))
    assert within(30, lambda: folder_name(fifo_folder)) == fifo_folder.name
    within(30, lambda: cli_refused(capsys, "info", fifo_folder, words=("FIFO",)))


def test_dev_zero_is_refused_without_reading(good, tmp_path, capsys):
    folder = copy(good, tmp_path)
    (folder / "adapter.json").rename(folder / "saved.json")
    (folder / "adapter.json").symlink_to("/dev/zero")
    within(30, lambda: refused_load(folder, "character device"))
    (folder / "adapter.json").unlink()
    (folder / "saved.json").rename(folder / "adapter.json")
    (folder / "adapter.safetensors").unlink()
    (folder / "adapter.safetensors").symlink_to("/dev/zero")
    within(30, lambda: refused_load(folder, "adapter.safetensors", "not a regular file"))
    within(30, lambda: cli_refused(capsys, "info", folder, words=("not a regular file",)))


def test_a_huge_adapter_json_is_refused_unread(good, tmp_path):
    folder = copy(good, tmp_path)
    os.truncate(folder / "adapter.json", 1 << 30)  # 1 GiB (sparse: costs no disk)
    refused_load(folder, "1,073,741,824 bytes")


def test_deep_nesting_is_refused_before_parsing(good, tmp_path, capsys):
    folder = copy(good, tmp_path)
    (folder / "adapter.json").write_text("[" * 100_000 + "]" * 100_000)
    refused_load(folder, "100,000 levels deep")
    cli_refused(capsys, "info", folder, words=("levels deep",))
    brackets_in_strings = copy(good, tmp_path / "strings", lambda meta: meta.update(note="[[[[{{{{" * 1000))
    assert splice.attach(tiny_model("bert")).load(brackets_in_strings) == "good"


# -- what adapter.json says -------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("scale", math.nan), ("scale", math.inf), ("scale", 1e300),
                                           ("r", 10**8)])
def test_non_finite_and_absurd_options_are_refused_on_load(good, tmp_path, option, value):
    """A NaN scale used to load and then fail every request; a rank of 10**8 to allocate gigabytes."""
    folder = copy(good, tmp_path, lambda meta: meta["config"].update({option: value}))
    refused_load(folder, f"Bottleneck.{option}", "finite")


@pytest.mark.parametrize("make", [
    lambda: Bottleneck(scale=math.nan),
    lambda: Bottleneck(scale=-math.inf),
    lambda: LoRA(alpha=math.inf),
    lambda: LoRA(r=10**9),
    lambda: LoRA(alpha_pattern={"q": math.nan}),
    lambda: splice.PrefixTuning(init_std=math.nan),
    lambda: splice.Fusion(adapters=("a", "b"), temperature=1e100),
], ids=["nan-scale", "inf-scale", "inf-alpha", "huge-r", "nan-in-pattern", "nan-init", "huge-temperature"])
def test_every_method_refuses_non_finite_and_absurd_numbers(make):
    with pytest.raises(ConfigError, match="finite numbers"):
        make()


@pytest.mark.parametrize("make, field", [
    (lambda: heads.Classification(num_labels=10**8), "num_labels"),
    (lambda: heads.Regression(num_outputs=10**8), "num_outputs"),
    (lambda: heads.TokenClassification(num_labels=10**8), "num_labels"),
    (lambda: heads.Classification(num_labels=2, layers=10**6), "layers"),
])
def test_heads_of_absurd_size_are_refused_by_name(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_a_huge_head_in_adapter_json_is_refused(good, tmp_path):
    folder = copy(good, tmp_path, lambda meta: meta["head"].update(num_labels=10**8))
    refused_load(folder, "num_labels")


def test_shapes_are_checked_against_the_file_before_anything_is_allocated(good, tmp_path, monkeypatch):
    """adapter.json says r=100000 (legal, but the file holds r=4 tensors): refused with the shapes named,
    and no adapter is ever built on a real device (it would have taken gigabytes on a real model)."""
    folder = copy(good, tmp_path, lambda meta: meta["config"].update(r=100_000))
    built_on = []
    real_adapter = splice.checkpoint.Adapter

    def recording(*args, **kwargs):
        built_on.append(torch.empty(0).device.type)
        return real_adapter(*args, **kwargs)

    monkeypatch.setattr(splice.checkpoint, "Adapter", recording)
    refused_load(folder, "shape", "[100000")
    assert built_on == ["meta"]


@pytest.mark.parametrize("edit, words", [
    (lambda meta: meta.update(config=[1, 2]), ('"config" must be an object',)),
    (lambda meta: meta.update(head=[1]), ('"head" must be',)),
    (lambda meta: meta.update(name=7), ('"name" must be a string',)),
])
def test_entries_of_the_wrong_json_type(good, tmp_path, capsys, edit, words):
    folder = copy(good, tmp_path, edit)
    refused_load(folder, *words)
    cli_refused(capsys, "info", folder, words=words)


def test_a_list_instead_of_an_object(good, tmp_path, capsys):
    folder = copy(good, tmp_path)
    (folder / "adapter.json").write_text("[1, 2]")
    refused_load(folder, "must hold a JSON object")
    cli_refused(capsys, "info", folder, words=("must hold a JSON object",))


# -- paths and weights -------------------------------------------------------------------------------------------


def test_an_over_long_path_component_is_a_clear_refusal(tmp_path, capsys):
    refused_load(tmp_path / LONG, "No adapter folder")
    refused_load(LONG, "No adapter folder")
    cli_refused(capsys, "info", tmp_path / LONG, words=("No adapter folder",))
    cli_refused(capsys, "info", LONG, words=("No adapter folder",))


def test_info_refuses_a_truncated_adapter(good, tmp_path, capsys):
    """`splice info` used to describe it from adapter.json alone and exit 0."""
    folder = copy(good, tmp_path)
    os.truncate(folder / "adapter.safetensors", os.path.getsize(folder / "adapter.safetensors") - 100)
    cli_refused(capsys, "info", folder, words=("adapter.safetensors", "truncated"))
    (folder / "adapter.safetensors").unlink()
    cli_refused(capsys, "info", folder, words=("adapter.safetensors",))
    assert cli(capsys, "info", good)[0] == 0


def test_hub_push_refuses_a_truncated_adapter(good, tmp_path):
    folder = copy(good, tmp_path)
    os.truncate(folder / "adapter.safetensors", os.path.getsize(folder / "adapter.safetensors") // 2)
    hub = Hub(tmp_path / "hub")
    with pytest.raises(CheckpointError, match="truncated"):
        hub.push(folder, "cut", "1.0")
    assert hub.list() == []
    assert os.listdir(tmp_path / "hub" / "objects") == []


# -- the server --------------------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    app, _ = encoder_app(tmp_path / "served", max_wait_ms=1)
    with TestClient(app) as client:
        yield client


def still_serving(client) -> None:
    response = within(30, lambda: client.post("/v1/classify", json={"adapter": "a0", "inputs": ["fine"]}))
    assert response.status_code == 200, response.text


def test_server_refuses_a_fifo_without_freezing(client, fifo_folder):
    """It used to block the event loop reading the FIFO: every later request hung."""
    response = within(60, lambda: client.post("/v1/adapters", json={"source": str(fifo_folder)}))
    assert 400 <= response.status_code < 500, response.text
    still_serving(client)


def test_server_refuses_dev_zero_and_over_long_paths(client, good, tmp_path):
    zero = copy(good, tmp_path)
    (zero / "adapter.json").unlink()
    (zero / "adapter.json").symlink_to("/dev/zero")
    for source in (str(zero), str(tmp_path / LONG), LONG):
        response = within(60, lambda source=source: client.post("/v1/adapters", json={"source": source}))
        assert 400 <= response.status_code < 500, response.text
    still_serving(client)


def test_server_refuses_a_nan_scale_at_load(client, good, tmp_path):
    """It used to load, then answer 500 to the first request that used it."""
    folder = copy(good, tmp_path, lambda meta: meta["config"].update(scale=math.nan))
    response = client.post("/v1/adapters", json={"source": str(folder), "name": "nan"})
    assert 400 <= response.status_code < 500, response.text
    assert client.post("/v1/classify", json={"adapter": "nan", "inputs": ["x"]}).status_code == 404
    still_serving(client)
