"""Adapter files built to hurt, and the clear refusals they get. Here: NaN, infinite and absurd numbers in
method options and head sizes, refused when a config or head is made (ConfigError), and so when an
adapter.json holding them is loaded (CheckpointError), with the model untouched."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import splice
from splice import Bottleneck, CheckpointError, ConfigError, LoRA, heads

from tiny_models import tiny_model


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
