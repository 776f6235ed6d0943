"""Per-row routing of the methods after LoRA: VeRA, LoHa, LoKr, DoRA and Compacter run banked (one vectorised
call per layout and site) and each row of a mixed batch equals that row run alone with its adapter."""

import pytest
import torch

import splice
from splice.kernels import reference

from helpers import perturb, rows_alone
from tiny_models import tiny_inputs, tiny_model

CONFIGS = {
    "vera": splice.VeRA(r=4),
    "loha": splice.LoHa(r=3, alpha=6.0, targets="all-linear"),
    "lokr": splice.LoKr(r=2, alpha=4.0, targets=("q", "v", "down")),
    "lokr_both": splice.LoKr(r=1, decompose_both=True, init="lycoris"),  # both factors low-rank products
    "dora": splice.DoRA(r=4, alpha=8.0, targets=("q", "v", "down")),
    "dora_adapters": splice.DoRA(r=4, alpha=8.0, targets=("q", "v"), convention="adapters"),
    "compacter": splice.Compacter(r=8, phm_dim=4),
}
BANKED = {"VeRADelta", "LoHaDelta", "LoKrDelta", "DoRADelta", "CompacterDelta"}


def build(arch, configs=CONFIGS, copies=2):
    """``copies`` adapters of every config, each perturbed its own way."""
    model = splice.attach(tiny_model(arch))
    names = []
    for i, (kind, config) in enumerate(configs.items()):
        for copy in range(copies):
            name = f"{kind}{copy}"
            model.add(name, config)
            perturb(model.adapters[name], seed=10 * i + copy)
            names.append(name)
    return model, names


def routed_groups(model):
    """The delta classes the last routed forward ran vectorised, and how many setups it ran one by one."""
    plan = model.hooks.plan
    groups = {group.cls.__name__ for routed in plan.values() for group in routed.groups()}
    return groups, sum(len(stage.others) for routed in plan.values() for stage in routed._stages.values())


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])  # GQA; post-LN with biases; fused c_attn (Conv1D)
def test_mixed_batch_of_new_methods_equals_rows_run_alone(arch):
    configs = CONFIGS if arch != "gpt2" else {k: c for k, c in CONFIGS.items() if not k.startswith("lokr")}
    model, names = build(arch, configs)
    entries = [*names, "__base__", names[0]]
    inputs = tiny_inputs(arch, batch=len(entries), padded=True)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=entries)[0]
    assert model.hooks.plan is model.planner.resident().plan  # every adapter resident: all of them bankable
    assert routed_groups(model) == ({c for c in BANKED if arch != "gpt2" or c != "LoKrDelta"}, 0)
    torch.testing.assert_close(mixed, rows_alone(model, inputs, entries), atol=1e-5, rtol=1e-5)


def test_slots_follow_in_place_changes_of_computed_sources():
    """VeRA's, LoHa's and DoRA's slots are computed from their parameters: an in-place change rewrites them."""
    model, names = build("llama", {k: CONFIGS[k] for k in ("vera", "loha", "dora", "compacter")}, copies=1)
    inputs = tiny_inputs("llama", batch=len(names))
    with torch.no_grad():
        model(**inputs, adapter_names=names)
        for seed, name in enumerate(names):
            perturb(model.adapters[name], seed=50 + seed)
        mixed = model(**inputs, adapter_names=names)[0]
    torch.testing.assert_close(mixed, rows_alone(model, inputs, names), atol=1e-5, rtol=1e-5)


def test_dora_slots_follow_a_merge_into_the_base_weight_they_read():
    model, _ = build("llama", {"dora": CONFIGS["dora"], "lora": splice.LoRA(r=2, targets=("q",))}, copies=1)
    inputs = tiny_inputs("llama", batch=2)
    with torch.no_grad():
        model(**inputs, adapter_names=["dora0", "__base__"])
        model.merge("lora0")  # q's weight changes, so DoRA's norm there does
        mixed = model(**inputs, adapter_names=["dora0", "__base__"])[0]
    torch.testing.assert_close(mixed, rows_alone(model, inputs, ["dora0", "__base__"]), atol=1e-5, rtol=1e-5)


def test_routing_gradients_of_new_methods_equal_separate_runs():
    """Training routes through the adapters' own tensors stacked: each gets the gradient of its own rows."""
    kinds = ("loha", "lokr", "dora", "vera")
    routes = ["loha0", "lokr0", "dora0", "vera0", "dora0"]
    inputs = tiny_inputs("llama", batch=len(routes))

    def grads(mixed: bool):
        model, names = build("llama", {k: CONFIGS[k] for k in kinds}, copies=1)
        model.train_adapter(names)
        if mixed:
            model(**inputs, adapter_names=routes)[0].pow(2).sum().backward()
        else:
            for name in names:
                rows = [i for i, r in enumerate(routes) if r == name]
                model.activate(name)
                model(**{k: v[rows] for k, v in inputs.items()})[0].pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.adapters.named_parameters() if p.grad is not None}

    together, separate = grads(True), grads(False)
    assert together.keys() == separate.keys() and any(".magnitude" in n for n in together)
    for name in together:  # float32 sums in another order: 1e-5, or 1e-4 of the largest gradient
        scale = separate[name].abs().max().item()
        torch.testing.assert_close(together[name], separate[name], atol=1e-5 + 1e-4 * scale, rtol=1e-4)


def test_factored_methods_with_a_dropout_take_the_generic_path():
    """A routed call cannot draw each row's adapter its own rank / module dropout masks."""
    model, names = build("llama", {"loha": splice.LoHa(r=2, rank_dropout=0.1),
                                   "lokr": splice.LoKr(r=2, module_dropout=0.2)}, copies=1)
    inputs = tiny_inputs("llama", batch=3)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=[*names, "__base__"])[0]
    groups, one_by_one = routed_groups(model)
    assert not groups and one_by_one > 0
    torch.testing.assert_close(mixed, rows_alone(model, inputs, [*names, "__base__"]), atol=1e-5, rtol=1e-5)


def test_kronecker_op_equals_the_built_product():
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 5, 3, generator=gen)  # 2 tables + identity
    w1[-1], w2[-1] = 0, 0
    scale = torch.tensor([0.5, 2.0, 0.0])
    x, y = torch.randn(4, 6, 12, generator=gen), torch.randn(4, 6, 10, generator=gen)
    slots = torch.tensor([1, -1, 0, 1])
    out = reference.kronecker(x, y, w1, w2, scale, slots)
    for row, slot in enumerate(slots.tolist()):
        weight = torch.zeros(10, 12) if slot < 0 else torch.kron(w1[slot], w2[slot]) * scale[slot]
        torch.testing.assert_close(out[row], y[row] + x[row] @ weight.T, atol=1e-5, rtol=1e-5)
