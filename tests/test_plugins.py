"""Methods from outside splice: defined here, not in splice/methods/, they go everywhere a built-in one does.

``OutputScale`` (mergeable, merges that do not commute, banked) and ``SoftPrompt``
(soft positions) register with ``@splice.methods.register`` and are added, trained,
merged, routed per row beside LoRA rows and saved. A fresh Python process finds
them through a ``splice.methods`` entry point (a ``*.dist-info`` folder in a
temporary directory on PYTHONPATH), without importing this file first: it loads
a saved adapter, and trains one with ``splice train --method``.
examples/custom_method.py runs, and trains under ``splice train --method ssf`` too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import splice
from splice import kernels
from splice.anatomy import Anatomy, Site, linear_weight
from splice.methods import METHODS, Delta, MethodConfig, Recipe, register

from helpers import descend, perturb, rows_alone, state_copy
from tiny_models import tiny_inputs, tiny_model
from train_fixtures import save_tiny, sentiment_csv

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


@register
@dataclass(frozen=True, kw_only=True)
class OutputScale(MethodConfig):
    """Learned per-feature scales of some projections' outputs (a method of this test file)."""

    method: ClassVar[str] = "test_output_scale"
    mergeable: ClassVar[bool] = True
    merges_commute: ClassVar[bool] = False
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "test_output_scale": Recipe({"targets": ("q", "v")}, learning_rate=2e-2, help="scales of q and v outputs"),
    }

    targets: tuple[str, ...] = ("v",)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, self.targets)

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return OutputScaleDelta(site.out_features)


class OutputScaleDelta(Delta):
    stage = "output"
    banked = True
    bank_identity = {"scale": 1.0}

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype)

    @staticmethod
    def bank_sources(delta: OutputScaleDelta) -> dict[str, torch.Tensor]:
        return {"scale": delta.scale}

    @staticmethod
    def routed(first, table, rows, x, y):
        return kernels.scale_rows(y, table["scale"], rows)

    def check_merge(self, site: Site) -> None:
        if site.columns is not None:
            raise splice.AdapterError("OutputScale merges unfused projections only.")

    def merge(self, site: Site) -> None:
        with torch.no_grad():
            linear_weight(site.module).mul_(self.scale[:, None])

    def unmerge(self, site: Site) -> None:
        with torch.no_grad():
            linear_weight(site.module).div_(self.scale[:, None])


@register
@dataclass(frozen=True, kw_only=True)
class SoftPrompt(MethodConfig):
    """``length`` learned embeddings in front of the input (a soft method of this test file)."""

    method: ClassVar[str] = "test_soft_prompt"

    length: int = 2

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return [anatomy.prompt_site()]

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return SoftPromptDelta(self.length, anatomy.hidden_size)


class SoftPromptDelta(Delta):
    stage = "soft"

    def __init__(self, length: int, width: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, width) * 0.02)

    def soft(self) -> tuple[torch.Tensor]:
        return (self.embedding,)


def hidden(model, inputs, **kwargs) -> torch.Tensor:
    return model(**inputs, **kwargs)[0]


def test_registry_lists_what_the_decorator_registered():
    assert METHODS["test_output_scale"] is OutputScale and METHODS["test_soft_prompt"] is SoftPrompt
    assert splice.methods.recipe("test_output_scale").learning_rate == 2e-2
    assert splice.methods.recipe("test_soft_prompt").build is SoftPrompt  # a default recipe, named after it
    assert register(OutputScale) is OutputScale  # registering again is harmless


def test_bad_registrations_are_refused():
    @dataclass(frozen=True, kw_only=True)
    class Clash(MethodConfig):
        method: ClassVar[str] = "lora"

    with pytest.raises(splice.ConfigError, match="'lora' is taken by splice.methods.lora.LoRA"):
        register(Clash)

    class NotADataclass(MethodConfig):
        method: ClassVar[str] = "test_plain"

    with pytest.raises(splice.ConfigError, match="must be a dataclass"):
        register(NotADataclass)
    with pytest.raises(splice.ConfigError, match="MethodConfig subclass"):
        register(dict)
    with pytest.raises(splice.ConfigError, match="test_unknown.*entry point"):
        splice.methods.config_from_dict({"method": "test_unknown"})


def test_plugin_method_adds_trains_merges_and_routes_beside_lora():
    model = splice.attach(tiny_model("llama"))
    inputs = tiny_inputs("llama", batch=4)
    with torch.no_grad():
        reference = hidden(model, inputs)
    model.add("scale", OutputScale())
    model.add("prompt", SoftPrompt())
    model.add("lora", splice.LoRA(r=4, targets=["v", "o"]))
    model.activate("scale")
    with torch.no_grad():
        assert torch.equal(hidden(model, inputs), reference), "a fresh OutputScale is the identity"
    before, base = state_copy(model.adapters), state_copy(model.base)
    model.train_adapter(["scale", "prompt"], setup=splice.Stack("prompt", "scale"))
    target = torch.randn_like(reference)
    descend(model, lambda: (hidden(model, inputs) - target).pow(2).mean(), steps=3)
    model.eval()
    moved = {k.split(".")[0] for k, v in model.adapters.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {"scale", "prompt"}, "both plugin adapters train, the LoRA beside them does not"
    assert all(torch.equal(v, base[k]) for k, v in model.base.state_dict().items()), "training left the base alone"
    perturb(model.adapters["lora"], seed=1)

    entries = ["scale", "lora", "__base__", "prompt"]
    with torch.no_grad():
        mixed = hidden(model, inputs, adapter_names=entries)
    torch.testing.assert_close(mixed, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # single banked adapters: the resident plan runs them in one call per site
        hidden(model, inputs, adapter_names=["scale", "lora", "__base__", "scale"])
    assert {"scale", "lora"} <= set(model.planner.resident().position)

    model.activate("scale")
    with torch.no_grad():
        adapted = hidden(model, inputs)
        model.merge("scale")
        model.merge("lora")
        with pytest.raises(splice.AdapterError, match="Unmerge lora before 'scale': OutputScale rescales"):
            model.unmerge("scale")  # merges_commute = False
        model.unmerge("lora")
        torch.testing.assert_close(hidden(model, inputs), adapted, atol=1e-5, rtol=1e-5)
        model.unmerge("scale")
    with pytest.raises(splice.AdapterError, match="cannot be merged.*OutputScale"):
        model.merge("prompt")  # the list of mergeable methods comes from the registry


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python finds this file's methods and examples/custom_method.py's SSF as installed
    plugins: a dist-info folder with their ``splice.methods`` entry points, on PYTHONPATH."""
    root = tmp_path_factory.mktemp("plugins")
    info = root / "splice_test_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: splice-test-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[splice.methods]\n"
        f"test_output_scale = {Path(__file__).stem}:OutputScale\n"
        f"test_soft_prompt = {Path(__file__).stem}:SoftPrompt\n"
        "ssf = custom_method:SSF\n"
    )
    path = os.pathsep.join([str(root), str(HERE), str(REPO / "examples"), str(REPO)])
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}


def python(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_saved_plugin_adapter_loads_in_a_fresh_process(tmp_path, plugin_env):
    model = splice.attach(tiny_model("llama"))
    model.add("scale", OutputScale(targets=("q", "v")))
    perturb(model.adapters["scale"], seed=2)
    model.activate("scale")
    inputs = tiny_inputs("llama")
    torch.save({"inputs": inputs, "expected": hidden(model, inputs).detach()}, tmp_path / "expected.pt")
    model.save("scale", tmp_path / "scale")
    script = textwrap.dedent(f"""
        import sys, torch, splice
        from tiny_models import tiny_model
        assert {Path(__file__).stem!r} not in sys.modules
        assert "test_output_scale" not in [c.method for c in splice.METHODS.registered()]
        saved = torch.load({str(tmp_path / "expected.pt")!r})
        model = splice.attach(tiny_model("llama"))
        model.activate(model.load({str(tmp_path / "scale")!r}))  # finds the method through its entry point
        with torch.no_grad():
            assert torch.equal(model(**saved["inputs"])[0], saved["expected"])
        print(type(model.adapters["scale"].config).__module__)
    """)
    assert python(plugin_env, "-c", script).stdout.split() == [Path(__file__).stem]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {"bert": save_tiny("bert", root / "bert"), "csv": sentiment_csv(root / "sentiment.csv")}


@pytest.mark.parametrize("method", ["test_output_scale", "ssf"])
def test_plugin_method_trains_under_splice_train(tmp_path, plugin_env, files, method):
    out = tmp_path / method
    python(plugin_env, "-m", "splice", "train", "--model", str(files["bert"]), "--data", str(files["csv"]),
           "--method", method, "--out", str(out), "--epochs", "1", "--batch-size", "8", "-q")
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    assert meta["config"]["method"] == method and meta["training"]["method"] == method
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable"] > 0


def test_example_custom_method_runs(tmp_path, plugin_env, files):
    done = python(plugin_env, str(REPO / "examples" / "custom_method.py"), "--model", str(files["bert"]),
                  "--steps", "3")
    assert "per-row routing: SSF, LoRA and base rows in one batch equal each row run alone" in done.stdout
    assert "merged into the base weights and back: same logits" in done.stdout
