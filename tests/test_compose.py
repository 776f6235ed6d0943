"""Composition blocks, AdapterFusion, AdapterDrop and the continual-learning guarantee."""

import pytest
import torch

import splice
from splice import Average, BatchSplit, Fuse, Parallel, Split, Stack

from helpers import assert_same_state, descend, main_output, perturb, state_copy
from tiny_models import tiny_inputs, tiny_model


def build(arch="bert", **configs):
    model = splice.attach(tiny_model(arch))
    for seed, (name, config) in enumerate(configs.items()):
        model.add(name, config)
        perturb(model.adapters[name], seed=seed, std=0.3)
    return model


def run(model, setup, inputs, **options):
    model.activate(setup, **options)
    return main_output(model, inputs)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_stack_feeds_one_adapter_into_the_next(arch):
    # Two bias deltas stacked add up; two bottlenecks at one site compose in order.
    model = build(arch, a=splice.BitFit(), b=splice.BitFit(), c=splice.Bottleneck(r=4), d=splice.Bottleneck(r=4))
    inputs = tiny_inputs(arch, padded=True)
    model.add("ab", splice.BitFit())
    with torch.no_grad():
        for (_, summed), (_, a), (_, b) in zip(model.adapters["ab"].named_parameters(),
                                              model.adapters["a"].named_parameters(),
                                              model.adapters["b"].named_parameters()):
            summed.copy_(a + b)
    torch.testing.assert_close(run(model, Stack("a", "b"), inputs), run(model, "ab", inputs), atol=1e-5, rtol=1e-5)
    assert torch.equal(run(model, Stack("a", "b"), inputs), run(model, ["a", "b"], inputs))  # names in order = Stack
    assert not torch.allclose(run(model, Stack("c", "d"), inputs), run(model, Stack("d", "c"), inputs))


def test_stack_swaps_the_language_adapter_at_inference():
    """MAD-X: train a task adapter on top of language adapter 'en', then run it on top of 'de'."""
    model = build("bert", en=splice.Bottleneck(r=4), de=splice.Bottleneck(r=4), task=splice.Bottleneck(r=4))
    inputs = tiny_inputs("bert")
    model.train_adapter("task", setup=Stack("en", "task"))
    before = {n: state_copy(model.adapters[n]) for n in ("en", "de")}
    descend(model, lambda: model(**inputs)[0].pow(2).mean(), steps=2)
    for name in ("en", "de"):
        assert_same_state(model.adapters[name], before[name])
    model.eval()
    english, german = run(model, Stack("en", "task"), inputs), run(model, Stack("de", "task"), inputs)
    assert not torch.allclose(english, german)
    assert model.active == ("de", "task")


def test_average_of_outputs():
    model = build("llama", a=splice.BitFit(), b=splice.BitFit())
    model.add("mix", splice.BitFit())
    with torch.no_grad():
        for mix, a, b in zip(*(model.adapters[n].parameters() for n in ("mix", "a", "b"))):
            mix.copy_(0.25 * a + 0.75 * b)
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(run(model, Average("a", "b", weights=[0.25, 0.75]), inputs),
                               run(model, "mix", inputs), atol=1e-5, rtol=1e-5)
    with pytest.raises(splice.AdapterError, match="sum to 1"):
        Average("a", "b", weights=[0.5, 0.6])


def test_split_sends_sequence_slices_to_different_adapters():
    # Adapters only in the last block's FFN: nothing mixes positions after them.
    last = dict(layers=(1,), r=4)
    model = build("bert", a=splice.Bottleneck(**last), b=splice.Bottleneck(**last))
    inputs = tiny_inputs("bert", seq=7)
    split = run(model, Split("a", "b", splits=3), inputs)
    torch.testing.assert_close(split[:, :3], run(model, "a", inputs)[:, :3])
    torch.testing.assert_close(split[:, 3:], run(model, "b", inputs)[:, 3:])


def test_batch_split_and_parallel():
    model = build("llama", a=splice.LoRA(r=4, targets="all-linear"), b=splice.Bottleneck(r=4))
    inputs = tiny_inputs("llama", batch=3, padded=True)
    a, b = run(model, "a", inputs), run(model, "b", inputs)
    split = run(model, BatchSplit("a", "b", batch_sizes=[1, 2]), inputs)
    torch.testing.assert_close(split, torch.cat([a[:1], b[1:]]), atol=1e-5, rtol=1e-5)
    both = run(model, Parallel("a", "b"), inputs)
    assert both.shape[0] == 6
    torch.testing.assert_close(both, torch.cat([a, b]), atol=1e-5, rtol=1e-5)


def test_fusion_two_stage_training_touches_only_fusion(tmp_path):
    model = build("bert", a=splice.Bottleneck(r=4), b=splice.Bottleneck(r=4), c=splice.Bottleneck(r=4))
    inputs = tiny_inputs("bert", padded=True)
    frozen = {n: state_copy(model.adapters[n]) for n in "abc"}
    base = state_copy(model.base)
    model.add_fusion("abc", ["a", "b", "c"])
    fusion_before = state_copy(model.adapters["abc"])
    model.train_fusion("abc")
    assert model.active == ("abc", "a", "b", "c")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in model.adapters["abc"].parameters()) for p in trainable)
    descend(model, lambda: model(**inputs)[0].pow(2).mean(), steps=3)
    model.eval()
    for name in "abc":
        assert_same_state(model.adapters[name], frozen[name])
    assert_same_state(model.base, base)
    assert any(not torch.equal(v, fusion_before[k]) for k, v in model.adapters["abc"].state_dict().items())

    fused = run(model, Fuse("a", "b", "c"), inputs)
    assert torch.equal(fused, run(model, "abc", inputs))
    for name in ("a", "b", "c", "abc"):
        model.save(name, tmp_path / name)
    assert (tmp_path / "abc" / "adapter.json").read_text().count('"a"') >= 1
    fresh = splice.attach(tiny_model("bert"))
    for name in ("a", "b", "c", "abc"):
        fresh.load(tmp_path / name)
    assert torch.equal(run(fresh, "abc", inputs), fused)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("setup", ["fusion", "stack"])
def test_gradient_checkpointing_with_fuse_and_stack(setup):
    grads = []
    for checkpointing in (False, True):
        model = build("llama", a=splice.Bottleneck(r=4), b=splice.Bottleneck(r=4))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        if setup == "fusion":
            model.add_fusion("ab", ["a", "b"])
            perturb(model.adapters["ab"], seed=5)
            model.train_fusion("ab")
        else:
            model.train_adapter("b", setup=Stack("a", "b"))
        model(**tiny_inputs("llama"))[0].pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.adapters.named_parameters() if p.requires_grad})
    assert grads[0] and all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


def test_adapter_drop_skips_layers_and_their_hooks_do_no_work():
    model = build("llama", a=splice.LoRA(r=4, targets="all-linear"))
    inputs = tiny_inputs("llama")
    calls = []
    for site, delta in model.adapters["a"].items():
        delta.register_forward_hook(lambda module, args, out, key=site.key: calls.append(key))
    run(model, "a", inputs, skip_layers=[0])
    assert calls and not any(key.startswith("layers.0.") for key in calls)
    assert not any(key.startswith("layers.0.") for key in model.hooks.plan)
    # Skipping layer 0 equals an adapter that only ever had layer 1.
    model.add("only1", splice.LoRA(r=4, targets="all-linear", layers=(1,)))
    with torch.no_grad():
        for key, tensor in model.adapters["only1"].state_dict().items():
            tensor.copy_(model.adapters["a"].state_dict()[key])
    torch.testing.assert_close(run(model, "a", inputs, drop_first=1), run(model, "only1", inputs))


def test_adapter_drop_at_random_in_training_only():
    model = build("llama", a=splice.Bottleneck(r=4))
    inputs = tiny_inputs("llama")
    base = run(model, "a", inputs, skip_layers=[0, 1])
    model.activate("a", drop_p=0.9)
    model.train()
    torch.manual_seed(0)
    outputs = [model(**inputs)[0].detach() for _ in range(20)]
    assert any(torch.allclose(o, base) for o in outputs), "with p=0.9 some forwards drop every layer"
    assert any(not torch.allclose(o, base) for o in outputs)
    model.eval()
    assert not torch.allclose(main_output(model, inputs), base)  # no random drop at inference


def test_training_b_leaves_a_bit_identical():
    """No catastrophic forgetting: A's outputs are unchanged, bit for bit, after training B."""
    model = build("bert", a=splice.Bottleneck(r=4), b=splice.LoRA(r=4))
    inputs = tiny_inputs("bert", padded=True)
    before = run(model, "a", inputs)
    model.train_adapter("b")
    descend(model, lambda: model(**inputs)[0].pow(2).mean(), steps=3)
    model.eval()
    assert torch.equal(run(model, "a", inputs), before)


@pytest.mark.parametrize("make, message", [
    (lambda: Fuse("a", Average("b", "c")), "Fuse cannot contain Average"),
    (lambda: Stack("a", Parallel("b", "c")), "Stack cannot contain Parallel"),
    (lambda: Split("a", "b", splits=[0]), "positive split sizes"),
    (lambda: BatchSplit("a", "b", batch_sizes=[1]), "one row count per child"),
    (lambda: Stack(), "at least one adapter"),
    (lambda: Stack("a", 3), "adapter names or blocks"),
])
def test_blocks_refuse_nonsense(make, message):
    with pytest.raises(splice.AdapterError, match=message):
        make()


def test_activation_errors():
    model = build("bert", a=splice.Bottleneck(r=4), b=splice.Bottleneck(r=4), lora=splice.LoRA(r=4))
    with pytest.raises(splice.AdapterError, match="add_fusion"):
        model.activate(Fuse("a", "b"))
    with pytest.raises(splice.AdapterError, match="bottleneck adapters"):
        model.add_fusion("bad", ["a", "lora"])
    with pytest.raises(splice.AdapterError, match="No adapter named 'zzz'"):
        model.activate(Stack("a", "zzz"))
    model.add_fusion("ab", ["a", "b"])
    with pytest.raises(splice.AdapterError, match="fuse 'a'"):
        model.delete("a")
    with pytest.raises(splice.AdapterError, match="not a fusion"):
        model.train_fusion("a")
    with pytest.raises(splice.AdapterError, match="drop_p"):
        model.activate("a", drop_p=1.5)


@pytest.mark.parametrize("configs", [
    (splice.LoRA(r=2, targets="all-linear"), splice.LoRA(r=6, alpha=3, targets="all-linear")),
    (splice.LoRA(r=4, use_rslora=True), splice.LoRA(r=4, use_rslora=True)),
    (splice.IA3(), splice.IA3()),
    (splice.BitFit(), splice.BitFit()),
])
def test_exact_weight_average_equals_average_of_outputs(configs):
    model = build("llama", a=configs[0], b=configs[1])
    model.average("ab", ["a", "b"], weights=[0.3, 0.7])
    inputs = tiny_inputs("llama", padded=True)
    if isinstance(configs[0], splice.LoRA):
        assert model.adapters["ab"].config.r == configs[0].r + configs[1].r
    torch.testing.assert_close(run(model, "ab", inputs), run(model, Average("a", "b", weights=[0.3, 0.7]), inputs),
                               atol=1e-5, rtol=1e-5)


def test_parameter_average_and_refusals():
    model = build("bert", a=splice.Bottleneck(r=4), b=splice.Bottleneck(r=4), c=splice.Bottleneck(r=8))
    merged = model.average("ab", ["a", "b"], mode="parameters")
    for key, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, 0.5 * (model.adapters["a"].state_dict()[key]
                                                  + model.adapters["b"].state_dict()[key]))
    with pytest.raises(splice.AdapterError, match="not linear"):
        model.average("x", ["a", "b"])
    with pytest.raises(splice.AdapterError, match="different configs"):
        model.average("y", ["a", "c"], mode="parameters")
    with pytest.raises(splice.AdapterError, match="sum"):
        model.average("z", ["a", "b"], weights=[0.9, 0.9], mode="parameters")


BLOCK_METHODS = {
    "bottleneck": lambda: splice.Bottleneck(r=4),
    "houlsby": lambda: splice.Bottleneck(placement="houlsby", r=4),
    "lora": lambda: splice.LoRA(r=4, targets="all-linear"),
    "ia3": lambda: splice.IA3(),
    "bitfit": lambda: splice.BitFit(),
}
REDUCTIONS = {  # a block over one adapter (repeated) must reduce to that adapter
    "stack": lambda: Stack("a"),
    "average": lambda: Average("a", "a2", weights=[0.5, 0.5]),
    "split": lambda: Split("a", "a2", splits=3),
    "batch_split": lambda: BatchSplit("a", "a2", batch_sizes=[1, 1]),
}


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("method", BLOCK_METHODS)
@pytest.mark.parametrize("block", [*REDUCTIONS, "parallel"])
def test_every_block_reduces_to_its_adapter(arch, method, block):
    model = build(arch, a=BLOCK_METHODS[method]())
    model.add("a2", BLOCK_METHODS[method]())
    with torch.no_grad():
        for key, tensor in model.adapters["a2"].state_dict().items():
            tensor.copy_(model.adapters["a"].state_dict()[key])
    inputs = tiny_inputs(arch, batch=2, padded=True)
    alone = run(model, "a", inputs)
    if block == "parallel":
        torch.testing.assert_close(run(model, Parallel("a", "a2"), inputs), torch.cat([alone, alone]),
                                   atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(run(model, REDUCTIONS[block](), inputs), alone, atol=1e-5, rtol=1e-5)
    # ...and trains: gradients reach the adapter through the block
    model.train_adapter("a", setup=REDUCTIONS["stack"]() if block == "parallel" else REDUCTIONS[block]())
    model(**inputs)[0].pow(2).mean().backward()
    assert all(p.grad is not None for p in model.adapters["a"].parameters())


def test_fusion_rows_in_a_routed_batch():
    model = build("llama", a=splice.Bottleneck(r=4), b=splice.Bottleneck(r=4), lora=splice.LoRA(r=4))
    model.add_fusion("ab", ["a", "b"])
    perturb(model.adapters["ab"], seed=9)
    inputs = tiny_inputs("llama", batch=3, padded=True)
    entries = ["ab", "lora", "__base__"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=entries)[0]
    for row, setup in enumerate(entries):
        single = {k: v[row : row + 1] for k, v in inputs.items()}
        model.activate(setup) if setup != "__base__" else model.disable()
        torch.testing.assert_close(mixed[row : row + 1], main_output(model, single), atol=1e-5, rtol=1e-5)
