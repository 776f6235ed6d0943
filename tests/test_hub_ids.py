"""Adapters by Hugging Face Hub id, offline: a cache laid out as huggingface_hub lays it out
(``models--org--name/refs/<branch>``, ``snapshots/<commit>/...``), read with ``HF_HUB_OFFLINE=1``; and
``push_to_hub`` with ``HfApi``'s calls replaced (no network here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from fastapi.testclient import TestClient
from huggingface_hub.utils import filter_repo_objects

import splice
from splice import CheckpointError, LoRA
from splice.cli import main
from splice.hub_ids import ALLOW_PATTERNS, is_hub_id, parse_hub_id, served_name

from helpers import main_output, perturb
from serving import encoder_app
from tiny_models import tiny_inputs, tiny_model

MAIN, PINNED = "a" * 40, "b" * 40


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, read offline."""
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


def cached(cache: Path, repo: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of adapter folder ``source`` into ``cache`` as ``repo`` at ``commit``, named by ``refs``."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():  # huggingface_hub links snapshot files to blobs/; plain copies read the same
        shutil.copyfile(file, snapshot / file.name)
    for ref in refs:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


def lora_model(seed: int):
    model = splice.attach(tiny_model("bert"))
    model.add("qa", LoRA(r=4, targets=["q", "v"]))
    perturb(model.adapters["qa"], seed=seed)
    return model


def output(model, name: str) -> torch.Tensor:
    model.activate(name)
    return main_output(model, tiny_inputs("bert", seed=0))


def test_load_by_id_reads_the_cache_offline_and_pins_revisions(cache, tmp_path):
    main_model, pinned_model = lora_model(1), lora_model(2)
    main_model.save("qa", tmp_path / "main")
    pinned_model.save("qa", tmp_path / "pinned")
    cached(cache, "org/qa-lora", tmp_path / "main", MAIN)
    cached(cache, "org/qa-lora", tmp_path / "pinned", PINNED, refs=("v1",))

    model = splice.attach(tiny_model("bert"))
    assert model.load("org/qa-lora", name="latest") == "latest"
    assert model.load(f"org/qa-lora@{PINNED}", name="by_commit") == "by_commit"
    assert model.load("org/qa-lora@v1", name="by_tag") == "by_tag"
    torch.testing.assert_close(output(model, "latest"), output(main_model, "qa"))
    torch.testing.assert_close(output(model, "by_commit"), output(pinned_model, "qa"))
    torch.testing.assert_close(output(model, "by_tag"), output(pinned_model, "qa"))


def test_peft_format_by_id(cache, tmp_path):
    trained = lora_model(3)
    trained.save("qa", tmp_path / "peft", format="peft")
    cached(cache, "someone/peft-lora", tmp_path / "peft", MAIN)
    model = splice.attach(tiny_model("bert"))
    name = model.load("someone/peft-lora", name="qa")
    torch.testing.assert_close(output(model, name), output(trained, "qa"))


def test_an_id_neither_local_nor_cached_offline_is_one_clear_line(cache, capsys):
    model = splice.attach(tiny_model("bert"))
    with pytest.raises(CheckpointError, match=r"^org/missing is neither a local folder nor in the Hugging Face "
                                              r"cache \(HF_HUB_OFFLINE is set: unset it to download\)\.$"):
        model.load("org/missing")
    assert main(["info", "org/missing"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_local_folder_wins_over_an_id_of_the_same_shape(cache, tmp_path, monkeypatch):
    lora_model(4).save("qa", tmp_path / "org" / "local")
    monkeypatch.chdir(tmp_path)
    model = splice.attach(tiny_model("bert"))
    assert model.load("org/local") == "qa"  # read from ./org/local, the cache is empty


def test_info_by_id(cache, tmp_path, capsys):
    lora_model(5).save("qa", tmp_path / "a")
    snapshot = cached(cache, "org/qa-lora", tmp_path / "a", MAIN)
    assert main(["info", "org/qa-lora", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ref"], report["format"], Path(report["path"])) == ("org/qa-lora", "splice", snapshot)


def test_server_loads_an_adapter_by_id(cache, tmp_path):
    app, reference = encoder_app(tmp_path, adapters=1, max_wait_ms=1)
    cached(cache, "org/tweets", tmp_path / "adapters" / "a0", MAIN)
    with TestClient(app) as client:
        loaded = client.post("/v1/adapters", json={"source": "org/tweets"})
        assert loaded.status_code == 201, loaded.text
        assert loaded.json()["id"] == "tweets"
        answer = client.post("/v1/classify", json={"adapter": "tweets", "inputs": ["hello"]})
        assert answer.status_code == 200
        missing = client.post("/v1/adapters", json={"source": "org/not-cached"})
        assert missing.status_code == 400


def test_only_adapter_files_are_downloaded_and_ids_parse():
    files = ["adapter.json", "adapter.safetensors", "README.md", "adapter_config.json", "adapter_model.safetensors",
             "fused/pytorch_adapter.bin", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
             "optimizer.pt", "training_args.bin"]
    assert sorted(filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS)) == sorted(files[:6])
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("org/name") == ("org/name", None)
    assert not is_hub_id("../etc") and not is_hub_id("name@1.0") and not is_hub_id("a/b/c")
    assert served_name("org/my.adapter@main") == "my-adapter"


@pytest.mark.parametrize("format, weights", [("splice", "adapter.safetensors"), ("peft", "adapter_model.safetensors")])
def test_push_to_hub_uploads_the_adapter_with_its_card(monkeypatch, format, weights):
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        uploaded["repo"] = repo_id

    def upload_folder(self, *, folder_path, repo_id, commit_message, **kwargs):
        uploaded.update(files=sorted(p.name for p in Path(folder_path).iterdir()), message=commit_message,
                        card=(Path(folder_path) / "README.md").read_text())
        return f"https://huggingface.co/{repo_id}/commit/{MAIN}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = lora_model(6).push_to_hub("qa", "me/qa-lora", format=format)
    assert url.endswith(MAIN) and uploaded["repo"] == "me/qa-lora"
    assert weights in uploaded["files"] and "README.md" in uploaded["files"]
    assert "lora" in uploaded["card"] and format in uploaded["message"]
    with pytest.raises(CheckpointError, match="default branch"):
        lora_model(6).push_to_hub("qa", "me/qa-lora@dev")
