"""LoRA+ (``--option lora_plus_ratio=16``): B at a multiple of the learning rate, grouped as peft groups it."""

from __future__ import annotations

import json

import pytest

import splice
from splice import ConfigError, DoRA, VeRA

from tiny_models import tiny_model


def test_lora_plus_groups_follow_peft(tmp_path):
    from splice.train import lora_plus

    model = splice.attach(tiny_model("bert"))
    model.add("d", DoRA(r=2, targets=("q",)), head=splice.heads.Classification(num_labels=2))
    model.train_adapter("d")
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {n for n in names.values() if not n.endswith("bias")}
    groups = lora_plus.parameter_groups(model, decay, lr=1e-3, weight_decay=0.01, ratio=16)
    lr_of = {names[id(p)]: (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, (lr, weight_decay) in lr_of.items():
        fast = "lora_B" in name or "magnitude" in name or name.endswith("bias")  # peft: B and every vector
        assert lr == pytest.approx(16e-3 if fast else 1e-3), name
        assert weight_decay == (0.0 if name.endswith("bias") else 0.01), name
    model.add("v", VeRA(r=4))
    model.train_adapter("v")
    with pytest.raises(ConfigError, match="lora_plus_ratio"):
        lora_plus.parameter_groups(model, decay, lr=1e-3, weight_decay=0.0, ratio=16)
    with pytest.raises(ConfigError, match="positive number"):
        lora_plus.split_options({"r": 4, "lora_plus_ratio": -1})
    assert lora_plus.split_options({"r": 4, "lora_plus_ratio": 16}) == ({"r": 4}, 16.0)


def test_splice_train_with_lora_plus_ratio(tmp_path, capsys, monkeypatch):
    """``splice train --method lora --option lora_plus_ratio=16``: the Trainer's optimiser has B at 16x the rate."""
    from splice.cli import main
    from splice.train import lora_plus

    from train_fixtures import save_tiny, sentiment_csv

    seen = []
    groups_of = lora_plus.parameter_groups
    monkeypatch.setattr(lora_plus, "parameter_groups", lambda *a, **k: seen.append(groups_of(*a, **k)) or seen[-1])
    code = main([str(a) for a in (
        "train", "--model", save_tiny("bert", tmp_path / "bert"), "--data", sentiment_csv(tmp_path / "s.csv"),
        "--out", tmp_path / "run", "--method", "lora", "--option", "lora_plus_ratio=16", "--option", "r=2",
        "--epochs", "1", "--batch-size", "16", "--learning-rate", "0.001", "-q")])
    assert code == 0, capsys.readouterr().err
    assert seen and sorted({group["lr"] for group in seen[0]}) == pytest.approx([1e-3, 16e-3])
    meta = json.loads((tmp_path / "run" / "adapter" / "adapter.json").read_text())
    assert meta["config"]["r"] == 2 and "lora_plus_ratio" not in meta["config"]
    assert meta["training"]["options"]["lora_plus_ratio"] == 16
