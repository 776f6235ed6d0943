"""Small helpers shared by the test files."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from tiny_models import tiny_inputs, tiny_model

# Checkpoints written by the real peft and AdapterHub libraries (tests/fixtures/peers/README.md).
PEERS = Path(__file__).parent / "fixtures" / "peers"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(script: str, name: str) -> Iterator[ModuleType]:
    """``benchmarks/<script>`` imported as module ``name`` (the benchmarks are scripts, not a package), for a
    fixture to ``yield from``; it is registered in ``sys.modules`` meanwhile, where dataclasses look it up."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def perturb(module: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Add noise to every parameter, so a fresh (identity) adapter really changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * std)


def main_output(model, inputs) -> torch.Tensor:
    """The first output (last_hidden_state for base models, logits for models with a head), no grad."""
    with torch.no_grad():
        return model(**inputs)[0]


def rows_alone(model, inputs, entries) -> torch.Tensor:
    """Each row run by itself with its setup active (``"__base__"``: none): the definition per-row routing must meet."""
    outputs = []
    for row, name in enumerate(entries):
        model.disable() if name == "__base__" else model.activate(name)
        with torch.no_grad():
            outputs.append(model(**{k: v[row : row + 1] for k, v in inputs.items()})[0])
    model.disable()
    return torch.cat(outputs)


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``module`` is bit-identical to ``before`` (and no key came or went)."""
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"tensors changed: {changed[:5]}"


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def descend(model: nn.Module, loss_of, steps: int = 2, lr: float = 1e-2) -> None:
    """A few AdamW steps on whatever requires grad, minimising ``loss_of()`` (grads of the last step stay)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of().backward()
        optimizer.step()


def greedy(model, inputs, steps):
    """Greedy decoding by recomputing the whole sequence at every step (no cache): what ``generate`` must equal.

    Decoders: ``inputs`` holds ``input_ids`` and ``attention_mask``, finished rows are padded with 0.
    Encoder-decoders (``decoder_input_ids`` in ``inputs``, any value): the decoder starts from id 0.
    """
    if inputs.pop("decoder_input_ids", None) is not None:
        ids = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)
        for _ in range(steps):
            logits = model(**inputs, decoder_input_ids=ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        return ids
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
    for _ in range(steps):
        nxt = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
        nxt = nxt.masked_fill(done, 0)  # after end-of-sequence, generate pads
        done |= nxt == model.generation_config.eos_token_id
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


# Options some recipes need on the tiny test models, which are 32 wide: Compacter's recipes (reduction 32) would
# leave a bottleneck 1 wide, which phm_dim 4 cannot divide; reduction 4 gives a width of 8.
TINY_OPTIONS = {
    "compacter": {"reduction_factor": 4},
    "compacter++": {"reduction_factor": 4, "phm_rank": 2, "factorized_phm_rule": True},
}


def randomise(module: torch.nn.Module, std: float = 0.2, seed: int = 3) -> None:
    """Noise on every trainable tensor (peft's fresh LoRA is the identity), so an adapter really changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * std)


def peft_folder(tmp_path: Path, model_type: str, head: str, config, std: float = 0.2,
                seed: int = 3) -> tuple[Path, torch.Tensor]:
    """A peft adapter with random weights (``randomise``) saved by peft itself, and peft's output on padded
    inputs."""
    import peft  # a test extra, as the peft fixtures' tests need

    peft_model = peft.get_peft_model(tiny_model(model_type, head), config)
    randomise(peft_model, std, seed)
    folder = tmp_path / "peft"
    peft_model.save_pretrained(folder)
    return folder, main_output(peft_model.eval(), tiny_inputs(model_type, padded=True))
