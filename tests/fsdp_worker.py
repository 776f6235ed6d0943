"""One rank of the FSDP test (tests/test_fsdp.py), started by torchrun: a tiny Llama with a splice LoRA, sharded
with FSDP2 (``fully_shard``: each decoder layer, then the whole adapted model) over gloo on the CPU, trained a few
steps on this rank's rows. Rank 0 writes the gathered adapter and whether the base stayed bit-identical.

The same model, rows and steps without FSDP are :func:`adapted` and :func:`batch` here, so the test can train
the reference that every rank's gradients, averaged, must reproduce."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import splice  # noqa: E402

from helpers import perturb  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

STEPS, ROWS, TOKENS = 2, 2, 8


def adapted() -> splice.AdaptedModel:
    """The tiny Llama with a LoRA whose B is not zero (so the first step's loss depends on it), in training."""
    model = splice.attach(tiny_model("llama", head="lm", seed=0))
    model.add("task", splice.LoRA(r=4, targets=["q", "v"]))
    perturb(model.adapters["task"], seed=1)
    model.train_adapter("task")
    return model


def batch(rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows: every rank trains on different ones."""
    return torch.randint(3, 100, (ROWS, TOKENS), generator=torch.Generator().manual_seed(100 + rank))


def train(model: torch.nn.Module, rows: torch.Tensor) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded parameter (DTensor) gathered whole; a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = adapted()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    for layer in model.base.model.layers:
        fully_shard(layer)
    fully_shard(model)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    losses = train(model, batch(rank))
    base_after = {k: full(v.detach()) for k, v in model.base.state_dict().items()}
    adapter = {n: full(p.detach()) for n, p in model.named_parameters() if p.requires_grad}
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in adapter.items()}, str(out / "adapter.safetensors"))
        changed = [k for k in base_before if not torch.equal(base_before[k], base_after[k])]
        (out / "result.json").write_text(json.dumps(dict(
            world=dist.get_world_size(), trainable=trainable, losses=losses, base_changed=changed,
            sharded=all(type(p).__name__ == "DTensor" for p in model.parameters()))))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
