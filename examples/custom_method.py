"""A method from outside splice, in one file: SSF, learned scales and shifts of features (Lian et al. 2022).

SSF multiplies each chosen projection's output by a learned vector and adds
another: ``y * scale + shift``, starting at ``scale = 1, shift = 0`` (the identity).
This file is all it takes, written against the public contract
(:mod:`splice.methods.base`) and registry: the model adds, trains, saves, loads,
merges and averages SSF adapters, and routes mixed batches (SSF rows beside LoRA
rows, many SSF adapters in one call: it is banked, so on CUDA it runs on
splice's Triton kernels). A package offers it to ``splice train --method ssf``,
and lets saved SSF adapters load in any process, through an entry point::

    [project.entry-points."splice.methods"]
    ssf = "custom_method:SSF"

Run it: ``python examples/custom_method.py [--model PATH] [--steps 20]`` (default model:
all-MiniLM-L6-v2; data: the CrowdFlower tweets, both from PyPI packages).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

import splice
from splice import kernels
from splice.anatomy import PROJECTION_ROLES, Anatomy, Site, linear_weight
from splice.assets import minilm_dir, tweet_sentiment
from splice.methods import Delta, MethodConfig, Recipe, register
from splice.methods.base import base_bias, expand_targets, normalise_targets

LABELS = ["negative", "neutral", "positive"]


@register
@dataclass(frozen=True, kw_only=True)
class SSF(MethodConfig):
    """Scale and shift the outputs of the projections named by ``targets`` (default: every projection)."""

    method: ClassVar[str] = "ssf"
    mergeable: ClassVar[bool] = True  # W <- scale * W, b <- scale * b + shift
    merges_commute: ClassVar[bool] = False  # it rescales weights: merges undo only in reverse order
    averages_exactly: ClassVar[bool] = True  # linear in each vector at its site: vectors average exactly
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "ssf": Recipe(learning_rate=5e-3, help="learned scale and shift of every projection's output (Lian et al. "
                      "2022)"),
    }

    targets: tuple[str, ...] | str = ("all-linear",)

    def validate(self) -> None:
        normalise_targets(self, "targets", PROJECTION_ROLES)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return SSFDelta(site.out_features)


class SSFDelta(Delta):
    """``y * scale + shift`` on one projection's output."""

    stage = "output"
    banked = True  # bank_sources + routed: every row of a mixed batch in one call
    bank_identity = {"scale": 1.0}  # rows of other adapters: scale 1 (and shift 0, the default)

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype) + self.shift.to(y.dtype)

    @staticmethod
    def bank_sources(delta: SSFDelta) -> dict[str, torch.Tensor]:
        return {"scale": delta.scale, "shift": delta.shift}

    @staticmethod
    def routed(first: SSFDelta, table: dict[str, torch.Tensor], rows, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        return kernels.shift_rows(kernels.scale_rows(y, table["scale"], rows), table["shift"], rows)

    def check_merge(self, site: Site) -> None:
        base_bias(site, "merge an SSF shift")  # the shift needs a bias to go into
        if site.columns is not None:
            raise splice.AdapterError(f"SSF merges unfused projections only; {site.key} is part of a fused one.")

    def merge(self, site: Site) -> None:
        self._fold(site, self.scale.detach(), self.shift.detach())

    def unmerge(self, site: Site) -> None:
        scale = self.scale.detach()
        self._fold(site, 1 / scale, -self.shift.detach() / scale)

    def _fold(self, site: Site, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """``W <- scale * W``, ``b <- scale * b + shift``: the layer then computes ``y * scale + shift``."""
        weight, bias = linear_weight(site.module), base_bias(site, "merge an SSF shift")
        with torch.no_grad():
            weight.mul_(scale[:, None].to(weight.dtype))
            bias.mul_(scale.to(bias.dtype)).add_(shift.to(bias.dtype))


# -- the demonstration ------------------------------------------------------------------------------


def batch(rows, tokenizer) -> dict[str, torch.Tensor]:
    encoded = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=48,
                        return_tensors="pt")
    encoded["labels"] = torch.tensor([LABELS.index(label) for _, label in rows])
    return encoded


def backbone(path: str):
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" warning is expected
    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))


def logits(model, inputs, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}, **kwargs).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a BERT-like model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--steps", type=int, default=20, help="training steps of 16 tweets")
    args = parser.parse_args()
    path = args.model or str(minilm_dir())
    torch.manual_seed(0)
    rows = tweet_sentiment()
    random.Random(0).shuffle(rows)
    tokenizer = AutoTokenizer.from_pretrained(path)

    model = splice.attach(backbone(path))
    model.add("ssf", SSF(), head="classifier")  # its own trainable copy of the classifier
    model.train_adapter("ssf")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=SSF.recipes["ssf"].learning_rate)
    for step in range(args.steps):
        loss = model(**batch(rows[16 * step : 16 * (step + 1)], tokenizer)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"trained {args.steps} steps, last loss {loss.item():.3f}")
    model.eval()
    held_out = batch(rows[-8:], tokenizer)
    model.activate("ssf")
    trained = logits(model, held_out)

    with tempfile.TemporaryDirectory() as folder:  # save, and load into a fresh copy of the model
        model.save("ssf", folder)
        fresh = splice.attach(backbone(path))
        fresh.activate(fresh.load(folder))
        assert torch.allclose(logits(fresh, held_out), trained, atol=1e-5), "the reloaded adapter differs"
    print("saved and reloaded: same logits")

    model.add("lora", splice.LoRA(r=4, targets=["q", "v"]))  # another adapter, for a mixed batch
    with torch.no_grad():
        for parameter in model.adapters["lora"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    names = ["ssf", "lora", "__base__", "ssf", "lora", "__base__", "ssf", "lora"]
    mixed = logits(model, held_out, adapter_names=names)  # one forward, each row its own adapter
    for row, name in enumerate(names):
        model.disable() if name == "__base__" else model.activate(name)
        alone = logits(model, {k: v[row : row + 1] for k, v in held_out.items()})
        assert torch.allclose(mixed[row : row + 1], alone, atol=1e-4), f"row {row} ({name}) differs when routed"
    print("per-row routing: SSF, LoRA and base rows in one batch equal each row run alone")

    model.activate("ssf")
    model.merge("ssf")  # folded into the weights: the hooks skip it, the base computes it
    assert torch.allclose(logits(model, held_out), trained, atol=1e-4), "the merged adapter differs"
    model.unmerge("ssf")
    print("merged into the base weights and back: same logits")


if __name__ == "__main__":
    main()
