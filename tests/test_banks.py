"""Adapter banks: inference routing reads adapters from preallocated slots, kept in step with the adapters."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import splice
from splice.routing import Routed

from helpers import perturb, rows_alone
from tiny_models import tiny_inputs, tiny_model

CONFIGS = {
    "lora": splice.LoRA(r=4, targets="all-linear"),
    "lora_r8": splice.LoRA(r=8, alpha=4, targets=["q", "v"]),  # another rank: another bank, no padding
    "pfeiffer": splice.Bottleneck(r=4),
    "houlsby": splice.Bottleneck(placement="houlsby", r=4, non_linearity="gelu", ln_after=True),
    "ia3": splice.IA3(),
    "bitfit": splice.BitFit(),
}


def build(names=CONFIGS, arch="llama"):
    model = splice.attach(tiny_model(arch))
    for seed, name in enumerate(names):
        model.add(name, CONFIGS[name])
        perturb(model.adapters[name], seed=seed)
    return model


ENTRIES = ["lora", "pfeiffer", "__base__", "lora_r8", "houlsby", "ia3", "bitfit", "lora"]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_resident_routing_equals_rows_alone(mode):
    model = build()
    inputs = tiny_inputs("llama", batch=len(ENTRIES), padded=True)
    with mode():
        mixed = model(**inputs, adapter_names=ENTRIES)[0]
    assert model.hooks.plan is model.planner.resident().plan
    torch.testing.assert_close(mixed, rows_alone(model, inputs, ENTRIES), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # banks written inside inference_mode stay writable outside it
        model(**inputs, adapter_names=list(reversed(ENTRIES)))


def test_mixed_ranks_live_in_separate_banks_without_padding():
    model = build(["lora", "lora_r8"])
    with torch.no_grad():
        model(**tiny_inputs("llama", batch=2), adapter_names=["lora", "lora_r8"])
    ranks = {t.shape[1] for bank in model.planner.banks._banks.values() for name, t in bank.tensors.items()
             if name == "a"}
    assert ranks == {4, 8}


def test_adding_an_adapter_writes_only_its_slots():
    model = build(["lora", "pfeiffer"])
    inputs = tiny_inputs("llama", batch=2)
    with torch.no_grad():
        model(**inputs, adapter_names=["lora", "pfeiffer"])
    banks = model.planner.banks
    held = {id(r): (r, {n: t[r.slot].clone() for n, t in r.bank.tensors.items()}) for r in banks._records.values()}
    model.add("more", CONFIGS["lora"])
    perturb(model.adapters["more"], seed=9)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["more", "lora"])[0]
    assert len(banks) == len(held) + len(model.adapters["more"].sites)
    for record, values in held.values():  # every slot written before holds what it held, where it was
        assert banks._records[id(record.delta)] is record
        assert all(torch.equal(record.bank.tensors[n][record.slot], v) for n, v in values.items())
    torch.testing.assert_close(mixed, rows_alone(model, inputs, ["more", "lora"]), atol=1e-5, rtol=1e-5)


def test_slots_follow_in_place_changes_and_deletes():
    model = build(["lora", "pfeiffer", "ia3"])
    inputs = tiny_inputs("llama", batch=3)
    entries = ["lora", "pfeiffer", "ia3"]
    with torch.no_grad():
        model(**inputs, adapter_names=entries)
        perturb(model.adapters["pfeiffer"], seed=5)  # in place: the bank copy is now stale
        mixed = model(**inputs, adapter_names=entries)[0]
    torch.testing.assert_close(mixed, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
    held = len(model.planner.banks)
    model.delete("ia3")  # its slots are freed at once, not at the next batch
    assert len(model.planner.banks) == held - len(CONFIGS["ia3"].sites(model.anatomy))


def test_moving_the_model_refills_the_banks():
    model = build(["lora", "pfeiffer"])
    inputs = tiny_inputs("llama", batch=2)
    with torch.no_grad():
        model(**inputs, adapter_names=["lora", "pfeiffer"])
    model.to(torch.float64)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["lora", "pfeiffer"])[0]
    dtypes = {t.dtype for bank in model.planner.banks._banks.values() for t in bank.tensors.values()}
    assert mixed.dtype == torch.float64 and dtypes == {torch.float64}
    torch.testing.assert_close(mixed, rows_alone(model, inputs, ["lora", "pfeiffer"]))


def test_bank_grows_past_its_capacity():
    model = splice.attach(tiny_model("llama"))
    model.planner.banks.capacity = 2
    names = [f"a{i}" for i in range(5)]
    for seed, name in enumerate(names):
        model.add(name, splice.IA3())
        perturb(model.adapters[name], seed=seed)
    inputs = tiny_inputs("llama", batch=5)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names)[0]
    assert all(bank.capacity >= 5 for bank in model.planner.banks._banks.values())
    torch.testing.assert_close(mixed, rows_alone(model, inputs, names), atol=1e-5, rtol=1e-5)


class HostReads(TorchDispatchMode):
    """Records ops that read device data on the host or size outputs by data (each would stall a GPU)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item", "lift_fresh")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(word in func.__name__ for word in self.SYNCING):
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_routed_hooks_never_read_device_data(monkeypatch):
    """What a CUDA graph needs: once warm, the routed sites run tensor ops only (no host reads, no new tensors
    from host data), and the routing state is a device tensor set before the forward."""
    model = build(["lora", "pfeiffer", "ia3", "bitfit"])
    inputs = tiny_inputs("llama", batch=4)
    entries = ["lora", "pfeiffer", "ia3", "__base__"]
    with torch.no_grad():
        model(**inputs, adapter_names=entries)  # warm: lookups and banks are built once
    mode = HostReads()
    original = Routed._run

    def watched(self, *args, **kwargs):
        with mode:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(Routed, "_run", watched)
    with torch.no_grad():
        model(**inputs, adapter_names=list(reversed(entries)))
    assert mode.seen == []
    assert model.planner.resident().rows.index.device == next(model.base.parameters()).device


def test_training_routes_through_the_adapters_own_tensors():
    """With gradients on, routing stacks the adapters' parameters (banks are copies autograd cannot see)."""
    model = build(["lora", "pfeiffer"])
    model.train_adapter(["lora", "pfeiffer"])
    model(**tiny_inputs("llama", batch=2), adapter_names=["lora", "pfeiffer"])[0].sum().backward()
    assert len(model.planner.banks) == 0
    assert all(p.grad is not None for p in model.adapters.parameters())


def test_merging_rebuilds_the_resident_plan():
    model = build(["lora", "pfeiffer", "ia3"])
    inputs = tiny_inputs("llama", batch=2)
    entries = ["pfeiffer", "ia3"]
    with torch.no_grad():
        model(**inputs, adapter_names=entries)
        model.merge("lora")  # the base changes for every row; lora's own rows now run the merged base
        merged = model(**inputs, adapter_names=["lora", "ia3"])[0]
        torch.testing.assert_close(merged, rows_alone(model, inputs, ["__base__", "ia3"]), atol=1e-5, rtol=1e-5)
        model.unmerge("lora")
        torch.testing.assert_close(model(**inputs, adapter_names=entries)[0], rows_alone(model, inputs, entries),
                                   atol=1e-5, rtol=1e-5)


def test_per_batch_plans_stay_fresh_beside_the_resident_plan():
    """A composition's plan reads banks too, and refreshes them after an edit made between batches."""
    model = build(["lora", "pfeiffer"])
    inputs = tiny_inputs("llama", batch=2)
    entries = ["lora", splice.Stack("lora", "pfeiffer")]
    with torch.no_grad():
        model(**inputs, adapter_names=entries)
        model(**inputs, adapter_names=["pfeiffer", "lora"])
        perturb(model.adapters["lora"], seed=3)
        mixed = model(**inputs, adapter_names=entries)[0]
    torch.testing.assert_close(mixed, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
