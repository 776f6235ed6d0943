"""Routing that CUDA graphs and torch.compile can capture (issue 8): reserved room, frozen routing state.

No GPU here, so what a CUDA graph needs is checked on the CPU: every tensor a routed
forward reads keeps its address across new mixes, a newly loaded adapter and a
deleted one (a replay reads those addresses); the hooks never read device data on the
host; and ``torch.compile(fullgraph=True)`` serves all of that from one graph, with no
recompilation. ``benchmarks/gpu_check.py`` replays real CUDA graphs.
"""

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import splice
from splice.hooks import HookSet

from helpers import perturb, rows_alone
from tiny_models import VOCAB, tiny_config, tiny_inputs, tiny_model

CONFIGS = {
    "lora": splice.LoRA(r=4, targets="all-linear"),
    "pfeiffer": splice.Bottleneck(r=4),
    "houlsby": splice.Bottleneck(placement="houlsby", r=4, non_linearity="gelu", ln_after=True),
    "ia3": splice.IA3(),
    "bitfit": splice.BitFit(),
}


def add(model, name, config, seed):
    model.add(name, config)
    perturb(model.adapters[name], seed=seed)


def build(names=CONFIGS, base=None):
    model = splice.attach(base if base is not None else tiny_model("llama"))
    for seed, name in enumerate(names):
        add(model, name, CONFIGS[name], seed)
    return model


def saved_lora(model, folder, seed=11) -> str:
    """A LoRA like ``model``'s "lora" saved in ``folder`` (added, saved and deleted again)."""
    add(model, "to-save", CONFIGS["lora"], seed)
    model.save("to-save", folder)
    model.delete("to-save")
    return str(folder)


def decode_batch(rows: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, VOCAB, (rows, 1), generator=torch.Generator().manual_seed(rows))}


class ExternalReads(TorchDispatchMode):
    """The storages a forward reads but did not make: what a CUDA graph captured over it replays from."""

    def __init__(self):
        super().__init__()
        self.made, self.read, self._alive = set(), set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "lift_fresh" not in func.__name__:  # a constant the forward makes anew (transformers 4.57's masks)
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and id(t) not in self.made:
                    self.read.add(t.untyped_storage().data_ptr())
        out = func(*args, **kwargs)
        made = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.made.update(id(t) for t in made)
        self._alive += made  # ids stay unique while the forward runs
        return out


def test_routing_state_keeps_its_addresses_across_mixes_loads_and_deletes(tmp_path):
    model = build()
    folder = saved_lora(model, tmp_path / "new")
    model.reserve(adapters=8)
    model.freeze_routing()
    inputs = tiny_inputs("llama", batch=4, seq=3, padded=True)
    steps = [("mix", ["lora", "pfeiffer", "ia3", "__base__"]), ("another mix", ["houlsby", "bitfit", "lora", "lora"]),
             ("one adapter", ["ia3"] * 4), ("loaded", ["new", "houlsby", "new", "lora"]),
             ("deleted", ["new", "__base__", "bitfit", "houlsby"])]
    reads = {}
    for step, entries in steps:
        if step == "loaded":
            model.load(folder, name="new")
        if step == "deleted":
            model.delete("pfeiffer")
        model.route(entries)
        with torch.no_grad(), ExternalReads() as log:
            out = model.base(**inputs)[0]
        reads[step] = log.read
        torch.testing.assert_close(out, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
    first = reads["mix"]
    assert all(read == first for read in reads.values()), {step: len(read ^ first) for step, read in reads.items()}


def test_each_batch_size_keeps_its_own_index_tensor():
    """A graph per batch size: routing another size must not free (or move) the index a graph captured."""
    model = build(["lora", "ia3"])
    with torch.no_grad():
        model.route(["lora", "ia3", "ia3", "__base__"])
        four = model.planner.resident().rows.index
        model.route(["ia3", "lora"])
        model.route(["ia3", "ia3", "lora", "lora"])
    assert model.planner.resident().rows.index is four
    assert four.tolist() == [model.planner.resident().position[n] for n in ["ia3", "ia3", "lora", "lora"]]


def test_reserve_gives_every_bank_room_for_that_many_adapters():
    model = build(["lora", "pfeiffer"])
    model.reserve(adapters=5)
    banks = model.planner.banks
    before = {id(bank): (bank.capacity, [t.data_ptr() for t in bank.tensors.values()])
              for bank in banks._banks.values()}
    assert all(capacity >= 5 * 2 for capacity, _ in before.values())  # each layout sits at 2 layers' sites
    for i in range(4):  # 4 more of each: 5 LoRAs and 5 bottlenecks in all
        add(model, f"lora{i}", CONFIGS["lora"], seed=10 + i)
        add(model, f"pfeiffer{i}", CONFIGS["pfeiffer"], seed=20 + i)
    entries = ["lora3", "pfeiffer2", "lora", "pfeiffer0"]
    inputs = tiny_inputs("llama", batch=4)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=entries)[0]
    after = {id(bank): (bank.capacity, [t.data_ptr() for t in bank.tensors.values()])
             for bank in banks._banks.values()}
    assert after == before  # nothing grew, nothing moved
    assert model.planner.resident().rows.capacity >= 10
    torch.testing.assert_close(mixed, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)


def test_frozen_routing_refuses_what_would_move_and_leaves_the_model_as_it_was():
    model = build(["lora", "ia3"])
    model.reserve(adapters=3)
    model.freeze_routing()
    tensors = [t.data_ptr() for t in model.planner.banks.tensors()]
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in model.planner.banks.tensors())  # no copies
    added = []
    with pytest.raises(splice.AdapterError, match=r"slot\(s\) for adapter 'more\d+' in a bank of \d+ with 0 free"):
        while len(added) < 20:  # 3 reserved: at least 2 more LoRAs fit (a bank may hold more than asked)
            add(model, f"more{len(added)}", CONFIGS["lora"], seed=5)
            added.append(f"more{len(added)}")
    assert len(added) >= 2 and f"more{len(added)}" not in model.adapters
    refusals = {
        "rank8": splice.LoRA(r=8, targets="all-linear"),  # a new layout
        "bottleneck": splice.Bottleneck(r=4),  # a new site
    }
    for name, config in refusals.items():
        with pytest.raises(splice.AdapterError, match="no resident adapter had there"):
            model.add(name, config)
        assert name not in model.adapters
    with pytest.raises(splice.AdapterError, match="unfreeze_routing"):
        model.to(torch.float64)
    with pytest.raises(splice.AdapterError, match="not resident"):
        with torch.no_grad():
            model.route([splice.Stack("lora", "ia3"), "lora"])
    with pytest.raises(splice.AdapterError, match="moves the banks"):
        model.reserve(adapters=4)
    assert [t.data_ptr() for t in model.planner.banks.tensors()] == tensors
    assert next(model.parameters()).dtype == torch.float32
    inputs = tiny_inputs("llama", batch=3)
    entries = [added[0], "ia3", "lora"]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, adapter_names=entries)[0], rows_alone(model, inputs, entries),
                                   atol=1e-5, rtol=1e-5)
    model.unfreeze_routing()  # and the same changes work again, growing what they need
    add(model, "another", CONFIGS["lora"], seed=6)
    add(model, "bottleneck", splice.Bottleneck(r=4), seed=7)
    entries = ["another", "bottleneck", added[-1]]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, adapter_names=entries)[0], rows_alone(model, inputs, entries),
                                   atol=1e-5, rtol=1e-5)


def test_route_serves_compositions_unfrozen_and_refuses_heads():
    model = build(["lora", "ia3"])
    model.add("headed", splice.LoRA(r=4), head=splice.heads.Classification(num_labels=2))
    inputs = tiny_inputs("llama", batch=2)
    entries = [splice.Stack("lora", "ia3"), "lora"]
    model.route(entries)
    with torch.no_grad():
        torch.testing.assert_close(model.base(**inputs)[0], rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
    with pytest.raises(splice.AdapterError, match="splice heads"):
        model.route(["headed", "lora"])


@pytest.mark.parametrize("adapters", [0, -2, 1.5, True])
def test_reserve_bad_input(adapters):
    with pytest.raises(splice.AdapterError, match="number of adapters"):
        build(["ia3"]).reserve(adapters)


class NoHostReads(TorchDispatchMode):
    """Fails at the first op that reads device data on the host or makes a tensor of host data (each would
    stall a GPU, or be frozen into a captured graph)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item", "lift_fresh", "_to_copy")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(word in func.__name__ for word in self.SYNCING):
            raise AssertionError(f"{func.__name__} in a routed hook")
        return func(*args, **(kwargs or {}))


def refuse(*args, **kwargs):
    raise AssertionError("a host read in a routed hook")


def strict_hooks(monkeypatch) -> None:
    """Make splice's hooks fail at any host read (until ``monkeypatch.undo()``)."""
    for name in ("_before", "_after"):
        def strict(self, *args, _hook=getattr(HookSet, name), **kwargs):
            with NoHostReads(), pytest.MonkeyPatch.context() as patch:
                for method in ("item", "tolist", "nonzero", "cpu", "numpy"):
                    patch.setattr(torch.Tensor, method, refuse)
                return _hook(self, *args, **kwargs)

        monkeypatch.setattr(HookSet, name, strict)


def test_routed_hooks_never_read_device_data_on_the_host(monkeypatch):
    model = build()
    model.reserve(adapters=8)
    model.freeze_routing()
    inputs = tiny_inputs("llama", batch=5)
    mixes = [["lora", "pfeiffer", "__base__", "houlsby", "bitfit"], ["ia3"] * 5]
    strict_hooks(monkeypatch)
    outputs = []
    for entries in mixes:
        model.route(entries)
        with torch.no_grad():
            outputs.append(model.base(**inputs)[0])
    monkeypatch.undo()
    for entries, out in zip(mixes, outputs):
        torch.testing.assert_close(out, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def compiled():
    """One layer, sdpa, no cache: the smallest Llama dynamo traces fast. Compiled once for the module's tests."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    config = tiny_config("llama")
    config.num_hidden_layers, config.use_cache = 1, False
    torch.manual_seed(0)
    base = transformers.AutoModel.from_config(config, attn_implementation="sdpa").eval()
    model = build(base=base)
    model.reserve(adapters=8)
    model.freeze_routing()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    return model, torch.compile(model.base, backend=counter, fullgraph=True), counter


def check_compiled(model, forward, counter, entries):
    inputs = decode_batch(len(entries))
    model.route(entries)
    with torch.no_grad():
        out = forward(**inputs)[0]
    torch.testing.assert_close(out, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1, "recompiled"


def test_compiled_forward_serves_every_mix_from_one_graph(compiled):
    """fullgraph=True: no graph break anywhere (a host read in a hook would be one); one frame: no recompiles."""
    for entries in (["lora", "pfeiffer", "ia3", "__base__"], ["houlsby", "bitfit", "lora", "lora"],
                    ["ia3"] * 4, ["__base__"] * 4):
        check_compiled(*compiled, entries)


def test_compiled_forward_serves_adapters_loaded_and_deleted_after_compiling(compiled, tmp_path):
    model = compiled[0]
    model.load(saved_lora(model, tmp_path / "new"), name="new")
    check_compiled(*compiled, ["new", "pfeiffer", "lora", "new"])
    model.delete("new")
    model.delete("houlsby")
    check_compiled(*compiled, ["bitfit", "pfeiffer", "lora", "ia3"])
