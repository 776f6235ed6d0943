"""Per-row routing: row i of a mixed batch equals row i run alone with its adapter active."""

import pytest
import torch

import splice

from helpers import main_output, perturb
from tiny_models import tiny_inputs, tiny_model

ADAPTERS = {
    "pfeiffer": splice.Bottleneck(r=4),
    "pfeiffer_wide": splice.Bottleneck(r=6),  # another width: routed with zero padding
    "houlsby": splice.Bottleneck(placement="houlsby", r=4, non_linearity="gelu", ln_after=True),
    "parallel": splice.Bottleneck(placement="parallel", r=3, scale=2.0, ln_before=True),
    "lora": splice.LoRA(r=4, targets="all-linear"),
    "lora_r8": splice.LoRA(r=8, alpha=4, targets=["q", "v"]),  # another rank: zero-padded
    "ia3": splice.IA3(),
    "bitfit": splice.BitFit(),
}
ARCHS = ["bert", "llama", "gpt2", "opt", "t5"]  # post-LN, GQA, fused qkv, flattened FFN, encoder-decoder


def build(arch, names=ADAPTERS):
    model = splice.attach(tiny_model(arch))
    for seed, name in enumerate(names):
        model.add(name, ADAPTERS[name])
        perturb(model.adapters[name], seed=seed)
    return model


def alone(model, inputs, row, setup):
    single = {k: v[row : row + 1] for k, v in inputs.items()}
    if setup == "__base__":
        model.disable()
    else:
        model.activate(setup)
    return main_output(model, single)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batch_rows_equal_rows_run_alone(arch):
    model = build(arch)
    entries = [*ADAPTERS, "__base__", "lora", splice.Stack("lora", "pfeiffer")]
    batch = len(entries)
    inputs = tiny_inputs(arch, batch=batch, padded=True)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=entries)[0]
    for row, setup in enumerate(entries):
        torch.testing.assert_close(mixed[row : row + 1], alone(model, inputs, row, setup), atol=1e-5, rtol=1e-5)


def test_routing_trains_only_the_adapters_of_the_batch():
    model = build("llama", ["lora", "pfeiffer", "ia3", "bitfit"])
    model.train_adapter(["lora", "pfeiffer", "ia3", "bitfit"])
    inputs = tiny_inputs("llama", batch=4)
    model(**inputs, adapter_names=["lora", "pfeiffer", "__base__", "lora"])[0].pow(2).mean().backward()
    for name in ("lora", "pfeiffer"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters[name].parameters())
    for name in ("ia3", "bitfit"):  # not named by any row
        assert all(p.grad is None for p in model.adapters[name].parameters())
    assert all(p.grad is None for p in model.base.parameters())


def test_routing_gradients_equal_separate_runs():
    """A multi-task batch gives each adapter the gradient it gets from its own rows alone."""
    inputs = tiny_inputs("bert", batch=4)
    routes = ["lora", "pfeiffer", "lora", "pfeiffer"]

    def grads(mixed: bool):
        model = build("bert", ["lora", "pfeiffer"])
        model.train_adapter(["lora", "pfeiffer"])
        if mixed:
            model(**inputs, adapter_names=routes)[0].pow(2).sum().backward()
        else:
            for name in ("lora", "pfeiffer"):
                rows = [i for i, r in enumerate(routes) if r == name]
                model.activate(name)
                model(**{k: v[rows] for k, v in inputs.items()})[0].pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.adapters.named_parameters()}

    together, separate = grads(True), grads(False)
    for name in together:
        torch.testing.assert_close(together[name], separate[name], atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_routing_with_gradient_checkpointing():
    grads = []
    for checkpointing in (False, True):
        model = build("llama", ["lora", "pfeiffer"])
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.train_adapter(["lora", "pfeiffer"])
        model(**tiny_inputs("llama", batch=3), adapter_names=["lora", "pfeiffer", "__base__"])[0].sum().backward()
        grads.append({n: p.grad for n, p in model.adapters.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


def test_generate_routes_rows():
    model = splice.attach(tiny_model("llama", head="lm"))
    for seed, name in enumerate(["a", "b"]):
        model.add(name, splice.LoRA(r=4, targets="all-linear"))
        perturb(model.adapters[name], seed=seed, std=0.5)
    inputs = tiny_inputs("llama", batch=3)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    mixed = model.generate(**inputs, adapter_names=["a", "b", "__base__"], **kwargs)
    for row, setup in enumerate(["a", "b", None]):
        model.activate(setup) if setup else model.disable()
        single = model.generate(**{k: v[row : row + 1] for k, v in inputs.items()}, **kwargs)
        assert torch.equal(mixed[row : row + 1], single)


def test_routing_plan_is_reused_across_mixes():
    """At inference, any mix of single adapters runs the one resident plan: only the row index changes."""
    model = build("bert", ["lora", "ia3"])
    inputs = tiny_inputs("bert", batch=2)
    with torch.no_grad():
        model(**inputs, adapter_names=["lora", "ia3"])
        plan = model.hooks.plan
        swapped = model(**inputs, adapter_names=["ia3", "lora"])[0]
        assert model.hooks.plan is plan
        model(**inputs, adapter_names=["lora", splice.Stack("lora", "ia3")])  # a composition: its own plan
        assert model.hooks.plan is not plan
        torch.testing.assert_close(swapped[0:1], alone(model, inputs, 0, "ia3"))
        model.add("late", ADAPTERS["bitfit"])  # a new adapter joins the resident plan, which grows in place
        perturb(model.adapters["late"], seed=7)
        late = model(**inputs, adapter_names=["late", "lora"])[0]
        assert model.hooks.plan is plan and "late" in model.planner.resident().position
        torch.testing.assert_close(late[0:1], alone(model, inputs, 0, "late"))
        model.delete("ia3")  # an adapter gone leaves it, and its position goes to the next one
        model.add("later", ADAPTERS["ia3"])
        perturb(model.adapters["later"], seed=8)
        after = model(**inputs, adapter_names=["later", "late"])[0]
        assert model.hooks.plan is plan and "ia3" not in model.planner.resident().position
        expected = torch.cat([alone(model, inputs, 0, "later"), alone(model, inputs, 1, "late")])
        torch.testing.assert_close(after, expected)


@pytest.mark.parametrize("entries, message", [
    (["lora"], "adapter_names has 1 entries for a batch of 2"),
    (["lora", "nope"], "No adapter named 'nope'"),
    (["lora", 7], "adapter name or a composition block"),
])
def test_routing_bad_input(entries, message):
    model = build("bert", ["lora"])
    with pytest.raises(splice.AdapterError, match=message):
        model(**tiny_inputs("bert", batch=2), adapter_names=entries)
