"""Every architecture of the anatomy table × every method of the core.

The methods come from the registry: every training recipe of splice's own methods
whose deltas change a site's input or output, alone or in a composite program (soft tokens, whose positions start
random, have their contract in test_prefix_prompt.py; a head alone has no site).
A new method file joins this matrix by itself.

Each case attaches a tiny random model, adds an adapter and checks the contract:
a fresh adapter leaves outputs unchanged; training moves only adapter tensors;
save -> load into a fresh model reproduces outputs; merge/unmerge round-trips;
gradient checkpointing gives the same gradients.
"""

import functools

import pytest
import torch

import splice
from splice.methods import BUILT_IN

from helpers import TINY_OPTIONS, assert_same_state, descend, perturb, state_copy
from tiny_models import ARCHITECTURES, DECODERS, tiny_inputs, tiny_model

# Options the matrix adds to some recipes' defaults, to cover more of a method than the CLI's defaults do.
COVERAGE = {
    "houlsby": {"non_linearity": "swish"},
    "parallel": {"scale": 2.0, "ln_before": True},
    "lora": {"r": 4, "alpha": 8, "targets": "all-linear", "dropout": 0.0},
    **TINY_OPTIONS,
    "loreft": {"dropout": 0.0},
}


def site_methods() -> dict:
    """Recipe name -> config factory, for every recipe of splice's methods whose deltas act at sites."""
    anatomy = splice.Anatomy(tiny_model("bert"))
    found = {}
    for cls in BUILT_IN.values():
        for name, recipe in cls.training_recipes().items():
            make = functools.partial(recipe.config, COVERAGE.get(name, {}))
            config = make()
            deltas = [config.build(site, anatomy) for site in config.sites(anatomy)]
            if deltas and all(acts_at_site(delta) for delta in deltas):
                found[name] = make
    return found


def acts_at_site(delta) -> bool:
    """A delta that changes its site's input or output (also a composite one, BOFT's rotation + scale), with no
    soft positions."""
    if delta.stage == "composite":
        return not delta.program().has_soft
    return delta.stage in ("input", "output")


METHODS = site_methods()
CASES = [(arch, method) for arch in ARCHITECTURES for method in METHODS]


def hidden(model, inputs):
    out = model(**inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def train_steps(model, name, inputs, steps=3):
    model.train_adapter(name)
    params = [p for p in model.parameters() if p.requires_grad]
    target = torch.randn_like(hidden(model, inputs))
    descend(model, lambda: (hidden(model, inputs) - target).pow(2).mean(), steps=steps)
    model.eval()
    return params


@pytest.mark.parametrize("arch,method", CASES)
def test_fresh_adapter_is_identity_and_training_moves_only_adapter(arch, method):
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch, padded=True)
    with torch.no_grad():
        reference = hidden(model, inputs)
    model.add("task", METHODS[method]())
    model.activate("task")
    with torch.no_grad():
        assert torch.equal(hidden(model, inputs), reference), "a fresh adapter must not change the output"

    before = state_copy(model.base)
    adapter_before = {k: v.clone() for k, v in model.adapters["task"].state_dict().items()}
    params = train_steps(model, "task", inputs)
    assert params and all(any(p is q for q in model.adapters["task"].parameters()) for p in params)
    assert_same_state(model.base, before)
    moved = [k for k, v in model.adapters["task"].state_dict().items() if not torch.equal(v, adapter_before[k])]
    assert moved, "training must update the adapter"
    with torch.no_grad():
        assert not torch.allclose(hidden(model, inputs), reference)
        model.disable()
        assert torch.equal(hidden(model, inputs), reference), "disable() must give the base output back"


@pytest.mark.parametrize("arch,method", CASES)
def test_save_load_into_fresh_model(arch, method, tmp_path):
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch, padded=True)
    model.add("task", METHODS[method]())
    perturb(model.adapters["task"])
    model.activate("task")
    with torch.no_grad():
        expected = hidden(model, inputs)
    model.save("task", tmp_path / "task")

    fresh = splice.attach(tiny_model(arch))
    assert fresh.load(tmp_path / "task") == "task"
    fresh.activate("task")
    with torch.no_grad():
        assert torch.equal(hidden(fresh, inputs), expected)


@pytest.mark.parametrize("arch,method", [c for c in CASES if METHODS[c[1]]().mergeable])
def test_merge_unmerge_round_trip(arch, method):
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch, padded=True)
    with torch.no_grad():
        reference = hidden(model, inputs)
    before = state_copy(model.base)
    # Bias deltas can only merge where the base layer has a bias.
    config = METHODS[method]()
    if method == "bitfit":
        with_bias = [r for r in model.anatomy.linear_roles()
                     if all(getattr(s.module, "bias", None) is not None for s in model.anatomy.sites(r))]
        if not with_bias:
            with pytest.raises(splice.AdapterError, match="no bias"):
                model.add("task", config)
                model.merge("task")
            assert_same_state(model.base, before)
            return
        config = splice.BitFit(targets=tuple(with_bias))
    model.add("task", config)
    perturb(model.adapters["task"])
    model.activate("task")
    with torch.no_grad():
        adapted = hidden(model, inputs)
        model.merge("task")
        assert model.merged == ("task",)
        torch.testing.assert_close(hidden(model, inputs), adapted, atol=1e-5, rtol=1e-5)  # hooks skip merged
        model.disable()
        torch.testing.assert_close(hidden(model, inputs), adapted, atol=1e-5, rtol=1e-5)  # it lives in W now
        model.unmerge("task")
        torch.testing.assert_close(hidden(model, inputs), reference, atol=1e-5, rtol=1e-5)
    for key, tensor in model.base.state_dict().items():
        torch.testing.assert_close(tensor, before[key], atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("arch,method", CASES)
def test_gradient_checkpointing_gives_same_gradients(arch, method):
    grads = []
    for checkpointing in (False, True):
        model = splice.attach(tiny_model(arch))
        inputs = tiny_inputs(arch)
        model.add("task", METHODS[method]())
        perturb(model.adapters["task"])
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.train_adapter("task")
        torch.manual_seed(0)
        hidden(model, inputs).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.adapters["task"].named_parameters()})
    assert all(g is not None for g in grads[1].values()), "checkpointed blocks must still reach the adapter"
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_embeddings_need_grad_only_while_checkpointing(arch):
    """Without checkpointing, nothing below the first adapter needs a backward pass (the embeddings' output
    needs no grad); checkpointing switched on *after* train_adapter (as the HF Trainer does) still gets it."""
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch)
    model.add("task", METHODS["pfeiffer"]())
    perturb(model.adapters["task"])
    model.train_adapter("task")
    seen = []
    model.base.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    hidden(model, inputs).pow(2).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.adapters["task"].named_parameters()}
    assert seen and not any(seen), "without checkpointing the embeddings' output must not require grad"
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hidden(model, inputs).pow(2).mean().backward()
    assert seen[-1], "reentrant checkpointing needs the embeddings' output to require grad"
    for name, parameter in model.adapters["task"].named_parameters():
        assert parameter.grad is not None, f"{name}: checkpointed blocks must still reach the adapter"
        torch.testing.assert_close(parameter.grad, expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", DECODERS + ("t5",))
@pytest.mark.parametrize("method", ["lora", "pfeiffer"])
def test_generate_with_adapter(arch, method):
    model = splice.attach(tiny_model(arch, head="lm"))
    model.add("task", METHODS[method]())
    perturb(model.adapters["task"], std=0.3)
    inputs = tiny_inputs(arch, padded=True)
    inputs.pop("decoder_input_ids", None)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    base_tokens = model.generate(**inputs, **kwargs)
    model.activate("task")
    adapted_tokens = model.generate(**inputs, **kwargs)
    assert adapted_tokens.shape == base_tokens.shape
    if method == "lora":  # greedy decoding through hooks equals decoding with the update merged in
        model.merge("task")
        model.disable()
        assert torch.equal(model.generate(**inputs, **kwargs), adapted_tokens)
