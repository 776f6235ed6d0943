"""Saving and loading adapter folders: round trips, folder layout, atomic writes, and clear
errors (raised before the model is touched) for every way a folder can be wrong."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import splice
from splice import IA3, BitFit, Bottleneck, CheckpointError, LoRA
from splice.methods import config_from_dict

from helpers import hook_count, main_output, perturb
from tiny_models import tiny_config, tiny_inputs, tiny_model

METHOD_CONFIGS = {
    "pfeiffer": Bottleneck(),
    "houlsby": Bottleneck(placement="houlsby", r=4),
    "parallel": Bottleneck(placement="parallel", r=4),
    "lora": LoRA(r=4, targets="all-linear"),
    "ia3": IA3(),
    "bitfit": BitFit(),
}
MODEL_TYPES = ("bert", "gpt2", "llama")
FINGERPRINT_KEYS = {"model_type", "hidden_size", "num_layers", "num_heads", "vocab_size"}


# -- helpers ---------------------------------------------------------------------------------


def snapshot(adapted) -> dict:
    return {
        "adapters": list(adapted.adapters.keys()),
        "active": adapted.active,
        "base": {k: v.detach().clone() for k, v in adapted.base.state_dict().items()},
        "hooks": hook_count(adapted.base),
    }


def assert_untouched(adapted, before: dict) -> None:
    assert list(adapted.adapters.keys()) == before["adapters"]
    assert adapted.active == before["active"]
    after = adapted.base.state_dict()
    assert after.keys() == before["base"].keys()
    for key, value in before["base"].items():
        assert torch.equal(after[key], value), f"base tensor {key} changed by a failed load"
    assert hook_count(adapted.base) == before["hooks"]


def edit_json(folder: Path, change) -> None:
    meta = json.loads((folder / "adapter.json").read_text())
    change(meta)
    (folder / "adapter.json").write_text(json.dumps(meta))


def dot_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def saved_lora(tmp_path):
    """A bert LoRA(r=4) adapter saved at tmp_path/'src'; returns (folder, model it came from)."""
    model = splice.attach(tiny_model("bert"))
    model.add("x", LoRA(r=4))
    perturb(model.adapters["x"])
    folder = tmp_path / "src"
    model.save("x", folder)
    return folder, model


def copy_of(folder: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_round_trip_gives_identical_outputs(tmp_path, model_type, method):
    config = METHOD_CONFIGS[method]
    inputs = tiny_inputs(model_type)

    model = splice.attach(tiny_model(model_type, seed=0))
    base_out = main_output(model, inputs)
    model.add("x", config)
    perturb(model.adapters["x"], seed=1)
    model.activate("x")
    out = main_output(model, inputs)
    assert not torch.allclose(out, base_out, atol=1e-6), "perturbed adapter should change the output"
    model.save("x", tmp_path / "x")

    fresh = splice.attach(tiny_model(model_type, seed=0))
    name = fresh.load(tmp_path / "x")
    assert name == "x"
    loaded = fresh.adapters["x"]
    assert loaded.config == config
    for (k1, v1), (k2, v2) in zip(model.adapters["x"].state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    fresh.activate("x")
    assert torch.equal(main_output(fresh, inputs), out)


def test_folder_contents_and_metadata(tmp_path):
    model = splice.attach(tiny_model("llama"))
    config = LoRA(r=4, targets="all-linear", alpha=16.0)
    model.add("mine", config)
    model.save("mine", tmp_path / "mine")

    folder = tmp_path / "mine"
    assert sorted(os.listdir(folder)) == ["README.md", "adapter.json", "adapter.safetensors"]
    meta = json.loads((folder / "adapter.json").read_text())
    assert {"format", "splice_version", "name", "config", "head", "base"} <= set(meta)
    assert meta["format"] == "splice-adapter"
    assert meta["splice_version"] == splice.__version__
    assert meta["name"] == "mine"
    assert meta["head"] is None
    assert FINGERPRINT_KEYS <= set(meta["base"])
    cfg = tiny_config("llama")
    assert meta["base"]["model_type"] == "llama"
    assert meta["base"]["hidden_size"] == cfg.hidden_size
    assert meta["base"]["num_layers"] == cfg.num_hidden_layers
    assert meta["base"]["num_heads"] == cfg.num_attention_heads
    assert meta["base"]["vocab_size"] == cfg.vocab_size
    assert config_from_dict(meta["config"]) == config

    card = (folder / "README.md").read_text()
    assert "mine" in card and "lora" in card

    from safetensors import safe_open

    with safe_open(str(folder / "adapter.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert keys == {k.removeprefix("deltas.") for k in model.adapters["mine"].state_dict()}
    assert "layers.0.q.lora_A.weight" in keys


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_config_round_trips_through_json(method):
    config = METHOD_CONFIGS[method]
    data = json.loads(json.dumps(config.to_dict()))
    assert config_from_dict(data) == config


# -- names and activation ------------------------------------------------------------------------


def test_load_names_and_is_not_active(saved_lora):
    folder, _ = saved_lora
    inputs = tiny_inputs("bert")
    model = splice.attach(tiny_model("bert"))
    base_out = main_output(model, inputs)

    assert model.load(folder) == "x"
    assert model.active == ()
    assert torch.equal(main_output(model, inputs), base_out), "a loaded adapter must not apply before activate()"

    assert model.load(folder, name="other") == "other"
    assert set(model.adapters) == {"x", "other"}
    assert model.active == ()

    before = snapshot(model)
    with pytest.raises(CheckpointError, match="x"):
        model.load(folder)
    assert_untouched(model, before)

    model.activate("x")
    out_x = main_output(model, inputs)
    model.activate("other")
    assert torch.equal(main_output(model, inputs), out_x)
    assert not torch.equal(out_x, base_out)


def test_loaded_adapter_is_frozen_until_trained(saved_lora):
    folder, _ = saved_lora
    model = splice.attach(tiny_model("bert"))
    model.load(folder)
    assert not any(p.requires_grad for p in model.adapters["x"].parameters())
    model.train_adapter("x")
    assert all(p.requires_grad for p in model.adapters["x"].parameters())


# -- prediction heads -----------------------------------------------------------------------------


def test_head_round_trip(tmp_path):
    inputs = tiny_inputs("bert")
    model = splice.attach(tiny_model("bert", "classification"))
    classifier_before = {k: v.clone() for k, v in model.base.classifier.state_dict().items()}
    base_logits = main_output(model, inputs)

    model.add("x", LoRA(), head="classifier")
    perturb(model.adapters["x"].deltas, seed=2)
    perturb(model.adapters["x"].head, seed=3, std=1.0)
    model.activate("x")
    logits = main_output(model, inputs)
    assert logits.shape == base_logits.shape
    assert not torch.allclose(logits, base_logits)
    model.save("x", tmp_path / "x")
    assert json.loads((tmp_path / "x" / "adapter.json").read_text())["head"] == "classifier"

    fresh = splice.attach(tiny_model("bert", "classification"))
    fresh.load(tmp_path / "x")
    fresh.activate("x")
    assert torch.equal(main_output(fresh, inputs), logits)

    for model_ in (model, fresh):
        for key, value in model_.base.classifier.state_dict().items():
            assert torch.equal(value, classifier_before[key]), "the base classifier must stay unchanged"
    fresh.disable()
    assert torch.equal(main_output(fresh, inputs), base_logits)


def test_head_adapter_into_model_without_that_head(tmp_path):
    """Same base shape (fingerprint matches), but the model has no 'classifier': a CheckpointError."""
    model = splice.attach(tiny_model("bert", "classification"))
    model.add("x", LoRA(), head="classifier")
    model.save("x", tmp_path / "x")

    plain = splice.attach(tiny_model("bert"))
    before = snapshot(plain)
    with pytest.raises(CheckpointError, match="classifier"):
        plain.load(tmp_path / "x")
    assert_untouched(plain, before)


# -- atomic writes ----------------------------------------------------------------------------------


def test_save_over_existing_adapter_replaces_it(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("a", LoRA(r=4))
    model.add("b", Bottleneck(r=3))
    target = tmp_path / "adapter"
    model.save("a", target)
    model.save("b", target)

    meta = json.loads((target / "adapter.json").read_text())
    assert meta["name"] == "b" and meta["config"]["method"] == "bottleneck"
    assert sorted(os.listdir(target)) == ["README.md", "adapter.json", "adapter.safetensors"]
    assert dot_entries(tmp_path) == []
    fresh = splice.attach(tiny_model("bert"))
    assert fresh.load(target) == "b"


def test_save_into_existing_empty_folder(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("a", IA3())
    (tmp_path / "empty").mkdir()
    model.save("a", tmp_path / "empty")
    assert (tmp_path / "empty" / "adapter.json").is_file()
    assert dot_entries(tmp_path) == []


def test_crash_while_writing_keeps_old_version(tmp_path, monkeypatch):
    inputs = tiny_inputs("bert")
    model = splice.attach(tiny_model("bert"))
    model.add("old", LoRA(r=4))
    perturb(model.adapters["old"])
    model.add("new", Bottleneck(r=2))
    target = tmp_path / "adapter"
    model.save("old", target)
    old_files = {name: (target / name).read_bytes() for name in os.listdir(target)}

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing tensors")

    monkeypatch.setattr("splice.checkpoint.save_file", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save("new", target)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save("new", tmp_path / "never")

    assert dot_entries(tmp_path) == [], "no temporary folders may be left behind"
    assert not (tmp_path / "never").exists(), "a failed first save must leave no folder"
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == old_files
    monkeypatch.undo()

    fresh = splice.attach(tiny_model("bert"))
    assert fresh.load(target) == "old"
    fresh.activate("old")
    model.activate("old")
    assert torch.equal(main_output(fresh, inputs), main_output(model, inputs))


def test_failed_swap_restores_old_version(tmp_path, monkeypatch):
    """Where folders cannot be exchanged in one step (macOS, NFS), the old one is moved aside first: if moving
    the new one into place then fails, the old one must be put back (not left hidden with the target gone)."""
    model = splice.attach(tiny_model("bert"))
    model.add("old", LoRA(r=4))
    model.add("new", LoRA(r=2))
    target = tmp_path / "adapter"
    model.save("old", target)
    old_json = (target / "adapter.json").read_text()

    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the second rename: staging -> target
            raise OSError("simulated failure renaming the new folder into place")
        return real_replace(src, dst)

    monkeypatch.setattr("splice.folders._exchange", lambda first, second: False)
    monkeypatch.setattr("splice.folders.os.replace", flaky_replace)
    with pytest.raises(OSError, match="simulated failure"):
        model.save("new", target)
    monkeypatch.undo()

    assert (target / "adapter.json").is_file(), "the old adapter must still be at the target"
    assert (target / "adapter.json").read_text() == old_json
    assert dot_entries(tmp_path) == []


def test_save_refuses_foreign_non_empty_folder(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("x", LoRA())
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")

    with pytest.raises(CheckpointError, match="mine") as info:
        model.save("x", folder)
    assert "adapter.json" in str(info.value)
    assert sorted(os.listdir(folder)) == ["notes.txt", "sub"]
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert dot_entries(tmp_path) == []


def test_save_onto_a_file_path(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("x", LoRA())
    path = tmp_path / "file.txt"
    path.write_text("keep me")
    with pytest.raises(CheckpointError, match="file"):
        model.save("x", path)
    assert path.read_text() == "keep me"


# -- mismatches and corrupted folders: CheckpointError before the model is touched ------------------


def bert_with(**changes) -> "splice.AdaptedModel":
    config = tiny_config("bert")
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return splice.attach(transformers.AutoModel.from_config(config, attn_implementation="eager"))


@pytest.mark.parametrize(
    "changes, field, expected, found",
    [
        ({"num_hidden_layers": 3}, "num_layers", "2", "3"),
        ({"hidden_size": 48, "intermediate_size": 96}, "hidden_size", "32", "48"),
        ({"num_attention_heads": 2}, "num_heads", "4", "2"),
        ({"vocab_size": 100}, "vocab_size", "128", "100"),
    ],
)
def test_base_of_another_shape(saved_lora, changes, field, expected, found):
    folder, _ = saved_lora
    model = bert_with(**changes)
    model.add("keep", BitFit())
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert field in message and expected in message and found in message
    assert_untouched(model, before)


@pytest.mark.parametrize("other", ["roberta", "gpt2"])
def test_base_of_another_model_type(saved_lora, other):
    folder, _ = saved_lora
    model = splice.attach(tiny_model(other))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "model_type" in message and "'bert'" in message and repr(other) in message
    assert_untouched(model, before)


def test_tensor_shape_mismatch(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "r8")
    edit_json(folder, lambda meta: meta["config"].update(r=8))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "lora_A" in message and "[4, 32]" in message and "[8, 32]" in message
    assert_untouched(model, before)


def test_unexpected_tensor_keys(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "only_q")
    edit_json(folder, lambda meta: meta["config"].update(targets=["q"]))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "unexpected" in message and "layers.0.v.lora_A.weight" in message
    assert_untouched(model, before)


def test_missing_tensor_keys(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "qkv")
    edit_json(folder, lambda meta: meta["config"].update(targets=["q", "k", "v"]))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "missing" in message and "layers.0.k.lora_A.weight" in message
    assert_untouched(model, before)


def _truncate(folder: Path) -> None:
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])


def _cut_tail(folder: Path) -> None:
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[:-16])


def _corrupt_header(folder: Path) -> None:
    data = bytearray((folder / "adapter.safetensors").read_bytes())
    data[8:24] = b"\xff" * 16
    (folder / "adapter.safetensors").write_bytes(bytes(data))


def _corrupt_header_length(folder: Path) -> None:
    data = bytearray((folder / "adapter.safetensors").read_bytes())
    data[0:8] = b"\xff" * 8
    (folder / "adapter.safetensors").write_bytes(bytes(data))


def _empty_weights(folder: Path) -> None:
    (folder / "adapter.safetensors").write_bytes(b"")


@pytest.mark.parametrize(
    "damage", [_truncate, _cut_tail, _corrupt_header, _corrupt_header_length, _empty_weights],
    ids=["half", "tail", "header-bytes", "header-length", "empty"],
)
def test_corrupted_weights(saved_lora, tmp_path, damage):
    folder = copy_of(saved_lora[0], tmp_path, "damaged")
    damage(folder)
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "adapter.safetensors" in message
    assert "corrupted" in message or "truncated" in message
    assert_untouched(model, before)


def test_missing_weights_file(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "noweights")
    (folder / "adapter.safetensors").unlink()
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="adapter.safetensors"):
        model.load(folder)
    assert_untouched(model, before)


def test_invalid_json(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "badjson")
    (folder / "adapter.json").write_text('{"format": "splice-adapter", ')
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    assert "adapter.json" in str(info.value) and "JSON" in str(info.value)
    assert_untouched(model, before)


def test_missing_adapter_json(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "nojson")
    (folder / "adapter.json").unlink()
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="adapter.json"):
        model.load(folder)
    assert_untouched(model, before)


def test_missing_folder(tmp_path):
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="nowhere"):
        model.load(tmp_path / "nowhere")
    assert_untouched(model, before)


def test_peft_folder(tmp_path):
    folder = tmp_path / "peft_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    assert "peft" in str(info.value)
    assert_untouched(model, before)


def test_not_a_splice_config(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "noformat")
    edit_json(folder, lambda meta: meta.pop("format"))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="format"):
        model.load(folder)
    assert_untouched(model, before)


def test_unknown_method(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "prefix")
    edit_json(folder, lambda meta: meta["config"].update(method="prefix_tuning"))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "prefix_tuning" in message and "lora" in message
    assert_untouched(model, before)


def test_unknown_config_option(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "newer")
    edit_json(folder, lambda meta: meta["config"].update(shiny_new_option=True))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value)
    assert "shiny_new_option" in message and "newer splice" in message
    assert_untouched(model, before)


def test_invalid_config_value(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "negr")
    edit_json(folder, lambda meta: meta["config"].update(r=-3))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="r must be a positive integer"):
        model.load(folder)
    assert_untouched(model, before)


def test_config_entry_missing(saved_lora, tmp_path):
    """The message must say what is missing, not just repr a KeyError ("'config'")."""
    folder = copy_of(saved_lora[0], tmp_path, "folder")
    edit_json(folder, lambda meta: meta.pop("config"))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError) as info:
        model.load(folder)
    message = str(info.value).replace(str(folder), "<folder>")
    assert re.search(r"(missing|no|lacks)\b.*\bconfig\b|\bconfig\b.*\b(missing|absent)", message), message
    assert_untouched(model, before)


def test_base_entry_of_wrong_type(saved_lora, tmp_path):
    folder = copy_of(saved_lora[0], tmp_path, "basestr")
    edit_json(folder, lambda meta: meta.update(base="bert"))
    model = splice.attach(tiny_model("bert"))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="base"):
        model.load(folder)
    assert_untouched(model, before)


# -- models splice has no table entry for ------------------------------------------------------------


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        return self.o_proj(self.q_proj(x) + self.k_proj(x) + self.v_proj(x))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _Attn()
        self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.down_proj(torch.relu(self.up_proj(x)))


class ToyTransformer(nn.Module):
    """A custom model with no Hugging Face config."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def test_round_trip_on_custom_model_without_hf_config(tmp_path):
    torch.manual_seed(0)
    model = splice.attach(ToyTransformer())
    x = torch.randn(2, 3, 8)
    model.add("x", LoRA(r=2))
    perturb(model.adapters["x"])
    model.activate("x")
    with torch.no_grad():
        out = model(x)
    model.save("x", tmp_path / "x")

    torch.manual_seed(0)
    fresh = splice.attach(ToyTransformer())
    fresh.load(tmp_path / "x")
    fresh.activate("x")
    with torch.no_grad():
        assert torch.equal(fresh(x), out)


# -- sizes -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_base_on_meta():
    config = transformers.BertConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522
    )
    with torch.device("meta"):
        base = transformers.BertModel(config)
    return splice.attach(base)


def test_bottleneck_size_on_bert_base(bert_base_on_meta):
    model = bert_base_on_meta
    if "size" not in model.adapters:
        model.add("size", Bottleneck(reduction_factor=16))
    hidden, layers = 768, 12
    units = hidden // 16
    expected = layers * (hidden * units + units + units * hidden + hidden)
    assert units == 48
    assert expected == 894_528

    report = model.summary(print_table=False)
    (row,) = [r for r in report.rows if r.name == "size"]
    assert row.method == "bottleneck"
    assert row.parameters == expected
    assert model.adapters["size"].num_parameters() == expected
    assert row.megabytes < 4
    assert row.megabytes == pytest.approx(expected * 4 / 1e6)
    assert str(report).count("894,528") == 1


def test_saving_a_meta_adapter_is_a_clear_error(bert_base_on_meta, tmp_path):
    """Weights on the meta device have no data: a CheckpointError, not torch's NotImplementedError."""
    model = bert_base_on_meta
    if "size" not in model.adapters:
        model.add("size", Bottleneck(reduction_factor=16))
    with pytest.raises(CheckpointError, match="meta"):
        model.save("size", tmp_path / "size")
    assert not (tmp_path / "size").exists()
    assert dot_entries(tmp_path) == []
