"""Every bad input gives a splice error (a SpliceError subclass) whose message names the problem
and the fix -- never a raw torch error, KeyError, TypeError or AttributeError -- plus the
positive paths of adapter management (activate, disable, delete, detach)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splice
from splice import (
    IA3,
    AdapterError,
    AnatomyError,
    BitFit,
    Bottleneck,
    ConfigError,
    LoRA,
    SpliceError,
)
from splice.methods import config_from_dict

from helpers import assert_same_state, main_output, perturb, state_copy
from tiny_models import tiny_inputs, tiny_model

# -- helpers ---------------------------------------------------------------------------------------


def hooked_modules(model: nn.Module) -> list[str]:
    return [
        name for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    ]


@pytest.fixture
def bert():
    return splice.attach(tiny_model("bert"))


@pytest.fixture
def llama():
    return splice.attach(tiny_model("llama"))


def test_error_hierarchy():
    for cls in (ConfigError, AnatomyError, AdapterError, splice.CheckpointError):
        assert issubclass(cls, SpliceError)
        assert issubclass(cls, ValueError)


# -- config validation ------------------------------------------------------------------------------

CONFIG_ERRORS = [
    # (factory, words the message must contain)
    (lambda: LoRA(r=-1), ["LoRA.r", "positive", "-1"]),
    (lambda: LoRA(r=0), ["LoRA.r", "positive"]),
    (lambda: LoRA(r=2.5), ["LoRA.r", "integer"]),
    (lambda: LoRA(r="4"), ["LoRA.r"]),
    (lambda: LoRA(alpha=-8), ["alpha", "positive"]),
    (lambda: LoRA(dropout=1.0), ["dropout", "[0, 1)"]),
    (lambda: LoRA(dropout=-0.1), ["dropout", "[0, 1)"]),
    (lambda: LoRA(init="xavier"), ["init", "kaiming", "gaussian", "xavier"]),
    (lambda: LoRA(targets=["q", "query"]), ["targets", "query", "all-linear"]),
    (lambda: LoRA(targets=[]), ["targets", "empty"]),
    (lambda: LoRA(targets=()), ["targets", "empty"]),
    (lambda: LoRA(layers=(0, -1)), ["layers", "-1", "non-negative"]),
    (lambda: Bottleneck(r=-4), ["Bottleneck.r", "positive"]),
    (lambda: Bottleneck(r=0), ["Bottleneck.r", "positive"]),
    (lambda: Bottleneck(r=8, reduction_factor=16), ["r", "reduction_factor", "not both"]),
    (lambda: Bottleneck(reduction_factor=0), ["reduction_factor", "positive"]),
    (lambda: Bottleneck(reduction_factor=-2), ["reduction_factor", "positive"]),
    (lambda: Bottleneck(non_linearity="sigmoidish"), ["non_linearity", "sigmoidish", "relu", "gelu"]),
    (lambda: Bottleneck(placement="sideways"), ["placement", "sideways", "pfeiffer", "houlsby", "parallel"]),
    (lambda: Bottleneck(init="zeros"), ["init", "zeros", "bert"]),
    (lambda: Bottleneck(dropout=1.5), ["dropout", "[0, 1)"]),
    (lambda: Bottleneck(dropout=-0.5), ["dropout", "[0, 1)"]),
    (lambda: Bottleneck(scale=0), ["scale", "positive"]),
    (lambda: Bottleneck(roles=["q"]), ["roles", "ffn", "attn"]),
    (lambda: Bottleneck(roles=["ffn", "down"]), ["roles", "down"]),
    (lambda: Bottleneck(roles=[]), ["roles"]),
    (lambda: Bottleneck(layers=[-1]), ["layers", "non-negative"]),
    (lambda: IA3(targets=["k", "value"]), ["targets", "value"]),
    (lambda: IA3(targets=[]), ["targets", "empty"]),
    (lambda: IA3(targets=["k", "v"], scale_inputs=["down"]), ["scale_inputs", "down", "targets"]),
    (lambda: IA3(layers=[-2]), ["layers"]),
    (lambda: BitFit(targets=["attn"]), ["targets", "attn"]),
    (lambda: BitFit(targets=[]), ["targets", "empty"]),
    (lambda: BitFit(layers=[-3]), ["layers"]),
]


@pytest.mark.parametrize("factory, words", CONFIG_ERRORS, ids=[str(i) for i in range(len(CONFIG_ERRORS))])
def test_config_validation(factory, words):
    with pytest.raises(ConfigError) as info:
        factory()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


@pytest.mark.parametrize(
    "factory",
    [
        lambda: LoRA(dropout="0.1"),
        lambda: Bottleneck(dropout="high"),
        lambda: LoRA(targets=5),
        lambda: IA3(targets="all-linear", scale_inputs=["nonexistent_role"]),
        lambda: IA3(scale_inputs=5),
        lambda: Bottleneck(scale="big"),
    ],
    ids=["lora-dropout-str", "bottleneck-dropout-str", "targets-int", "ia3-scale-inputs-unknown-role",
         "ia3-scale-inputs-int", "bottleneck-scale-str"],
)
def test_config_wrong_types_are_config_errors(factory):
    """Wrong value types must not escape as TypeError (or be accepted silently)."""
    with pytest.raises(ConfigError):
        factory()


def test_layers_as_a_single_int():
    """``layers=0`` is either read as (0,) or refused with a ConfigError -- never a TypeError."""
    try:
        config = LoRA(layers=0)
    except ConfigError as error:
        assert "layers" in str(error)
    else:
        assert config.layers == (0,)


@pytest.mark.parametrize("cls", [Bottleneck, LoRA, IA3, BitFit])
def test_from_dict_unknown_option(cls):
    data = cls().to_dict()
    data["frobnicate"] = 3
    with pytest.raises(ConfigError) as info:
        cls.from_dict(data)
    message = str(info.value)
    assert "frobnicate" in message and cls.__name__ in message
    with pytest.raises(ConfigError, match="frobnicate"):
        config_from_dict(data)


def test_config_from_dict_bad_input():
    with pytest.raises(ConfigError, match="prompt_tuning"):
        config_from_dict({"method": "prompt_tuning"})
    with pytest.raises(ConfigError, match="method"):
        config_from_dict({"r": 4})
    with pytest.raises(ConfigError, match="method"):
        config_from_dict(["lora"])


# -- attach -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thing", ["bert-base-uncased", None, 42, {"model": 1}])
def test_attach_non_module(thing):
    with pytest.raises(SpliceError) as info:
        splice.attach(thing)
    assert "nn.Module" in str(info.value)


def test_attach_twice():
    model = tiny_model("bert")
    adapted = splice.attach(model)
    with pytest.raises(AdapterError) as info:
        splice.attach(model)
    assert "already attached" in str(info.value)
    # After detach the model may be attached again.
    adapted.detach()
    splice.attach(model)


def test_attach_an_adapted_model():
    """Passing the AdaptedModel itself back to attach() is the same mistake: refuse it."""
    adapted = splice.attach(tiny_model("bert"))
    with pytest.raises(AdapterError, match="already"):
        splice.attach(adapted)


def test_attach_unknown_role_key():
    with pytest.raises(AnatomyError) as info:
        splice.attach(tiny_model("bert"), roles={"query": "attention.self.query"})
    message = str(info.value)
    assert "'query'" in message and "'blocks'" in message and "q, k, v" in message


def test_attach_model_without_blocks():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(AnatomyError) as info:
        splice.attach(model)
    message = str(info.value)
    assert "Sequential" in message and "blocks" in message and "roles=" in message
    # a failed attach does not mark the model as attached
    with pytest.raises(AnatomyError, match="blocks"):
        splice.attach(model)
    assert all(p.requires_grad for p in model.parameters()), "a failed attach must not freeze the model"


def test_attach_blocks_override_that_does_not_exist():
    with pytest.raises(AnatomyError) as info:
        splice.attach(tiny_model("bert"), roles={"blocks": "encoder.layerz"})
    assert "blocks" in str(info.value)


def test_roles_override_projection_to_non_linear():
    """A projection role mapped to a non-Linear module is an AnatomyError (at attach or at add)."""
    with pytest.raises(AnatomyError) as info:
        model = splice.attach(tiny_model("bert"), roles={"q": "attention.output.LayerNorm"})
        model.add("x", LoRA(targets=["q"]))
    message = str(info.value)
    assert "LayerNorm" in message and "'q'" in message and "nn.Linear" in message and "roles" in message

    with pytest.raises(AnatomyError, match="BertSelfAttention"):
        model = splice.attach(tiny_model("bert"), roles={"v": "attention.self"})
        model.add("x", LoRA(targets="all-linear"))


def test_roles_override_with_path_typo_names_the_path():
    """A mapping to a path that does not exist should name that path, not only the role."""
    with pytest.raises(AnatomyError) as info:
        model = splice.attach(tiny_model("bert"), roles={"q": "attention.self.qeury"})
        model.add("x", LoRA(targets=["q"]))
    assert "attention.self.qeury" in str(info.value)


# -- add ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.b", "../x", "", "__base__", "with space", "a/b", "x" * 200, None, 7])
def test_add_invalid_name(bert, name):
    with pytest.raises(AdapterError) as info:
        bert.add(name, LoRA())
    message = str(info.value)
    assert repr(name) in message and "letters, digits" in message
    assert list(bert.adapters) == []


def test_add_duplicate_name(bert):
    bert.add("x", LoRA())
    with pytest.raises(AdapterError) as info:
        bert.add("x", IA3())
    message = str(info.value)
    assert "'x'" in message and "already exists" in message and "delete" in message
    assert bert.adapters["x"].config == LoRA()


@pytest.mark.parametrize("config", [{"method": "lora"}, LoRA, "lora", None])
def test_add_non_config(bert, config):
    with pytest.raises(AdapterError) as info:
        bert.add("x", config)
    assert "splice.LoRA" in str(info.value)
    assert list(bert.adapters) == []


def test_add_role_the_model_lacks(bert):
    hooks_before = hooked_modules(bert.base)
    with pytest.raises(AnatomyError) as info:
        bert.add("g", LoRA(targets=["gate"]))
    message = str(info.value)
    assert "'gate'" in message and "'bert'" in message
    assert "attention.self.query" in message and "intermediate.dense" in message  # lists the block's submodules
    assert "roles=" in message and "splice.attach" in message  # and how to map it
    assert list(bert.adapters) == []
    assert hooked_modules(bert.base) == hooks_before


@pytest.mark.parametrize(
    "config",
    [lambda: LoRA(targets=["cross_q"]), lambda: Bottleneck(roles=["cross_attn"]),
     lambda: IA3(targets=["gate"], scale_inputs=())],
    ids=["lora-cross_q", "bottleneck-cross_attn", "ia3-gate"],
)
def test_add_other_missing_roles(bert, config):
    with pytest.raises(AnatomyError, match="roles="):
        bert.add("x", config())
    assert list(bert.adapters) == []


def test_add_layers_out_of_range(bert):
    with pytest.raises(AnatomyError) as info:
        bert.add("x", LoRA(layers=[1, 5]))
    message = str(info.value)
    assert "[5]" in message and "0..1" in message
    assert list(bert.adapters) == []


def test_add_head_that_does_not_exist(bert):
    with pytest.raises(AnatomyError) as info:
        bert.add("x", LoRA(), head="classifier")
    message = str(info.value)
    assert "'classifier'" in message and "embeddings" in message and "encoder" in message
    with pytest.raises(AnatomyError, match="auto"):
        bert.add("x", LoRA(), head="auto")
    assert list(bert.adapters) == []


def test_add_head_on_classification_model_typo():
    model = splice.attach(tiny_model("bert", "classification"))
    with pytest.raises(AnatomyError) as info:
        model.add("x", LoRA(), head="clasifier")
    assert "clasifier" in str(info.value) and "classifier" in str(info.value).replace("clasifier", "")


# -- management errors ------------------------------------------------------------------------------------------


def test_unknown_names(bert):
    bert.add("known", LoRA())
    for call in (bert.activate, bert.delete, bert.train_adapter, bert.merge, bert.unmerge):
        with pytest.raises(AdapterError) as info:
            call("ghost")
        message = str(info.value)
        assert "'ghost'" in message and "known" in message and "add" in message


def test_activate_bad_arguments(bert):
    bert.add("a", LoRA())
    with pytest.raises(AdapterError, match="disable"):
        bert.activate()
    with pytest.raises(AdapterError, match="twice"):
        bert.activate("a", "a")
    with pytest.raises(AdapterError, match="twice"):
        bert.activate(["a", "a"])
    with pytest.raises(AdapterError):
        bert.activate(3)
    assert bert.active == ()


def test_merge_bottleneck(bert):
    bert.add("b", Bottleneck())
    with pytest.raises(AdapterError) as info:
        bert.merge("b")
    message = str(info.value)
    assert "'b'" in message and "cannot be merged" in message
    assert "LoRA" in message and "IA3" in message and "BitFit" in message
    assert bert.merged == ()


def test_merge_twice_and_unmerge_not_merged(bert):
    bert.add("l", LoRA())
    perturb(bert.adapters["l"])
    bert.merge("l")
    state = state_copy(bert.base)
    with pytest.raises(AdapterError, match="already merged"):
        bert.merge("l")
    assert_same_state(bert.base, state)
    bert.unmerge("l")
    with pytest.raises(AdapterError, match="not merged"):
        bert.unmerge("l")


def test_bitfit_merge_without_base_bias_leaves_base_bit_identical(llama):
    llama.add("b", BitFit())
    perturb(llama.adapters["b"], std=1.0)
    before = state_copy(llama.base)
    with pytest.raises(AdapterError) as info:
        llama.merge("b")
    message = str(info.value)
    assert "no bias" in message and "unmerged" in message
    assert llama.merged == ()
    assert_same_state(llama.base, before)


def test_failed_partial_merge_leaves_base_bit_identical():
    """qwen2 has biases on q/k/v but not on o: BitFit merges q/k/v, then fails on o.

    The rollback must restore the base *bit for bit* (not by subtracting, which rounds)."""
    base = tiny_model("qwen2")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model = splice.attach(base)
    model.add("b", BitFit())
    perturb(model.adapters["b"], std=1.0)
    before = state_copy(model.base)
    with pytest.raises(AdapterError, match="no bias"):
        model.merge("b")
    assert model.merged == ()
    assert_same_state(model.base, before)


def test_unmerge_order_with_ia3(llama):
    llama.add("i", IA3())
    llama.add("l", LoRA())
    perturb(llama.adapters["i"], seed=1)
    perturb(llama.adapters["l"], seed=2)
    llama.merge("i")
    llama.merge("l")
    with pytest.raises(AdapterError) as info:
        llama.unmerge("i")
    message = str(info.value)
    assert "Unmerge l before 'i'" in message and "reverse order" in message
    assert llama.merged == ("i", "l")
    llama.unmerge("l")
    llama.unmerge("i")
    assert llama.merged == ()


def test_train_merged_adapter(bert):
    bert.add("l", LoRA())
    bert.merge("l")
    with pytest.raises(AdapterError) as info:
        bert.train_adapter("l")
    assert "merged" in str(info.value) and "unmerge" in str(info.value)
    assert not any(p.requires_grad for p in bert.adapters["l"].parameters())


def test_load_with_invalid_name_argument(bert, tmp_path):
    bert.add("x", LoRA())
    bert.save("x", tmp_path / "x")
    with pytest.raises(AdapterError, match="Invalid adapter name"):
        bert.load(tmp_path / "x", name="a.b")
    assert list(bert.adapters) == ["x"]


def test_save_unknown_adapter(bert, tmp_path):
    with pytest.raises(AdapterError, match="ghost"):
        bert.save("ghost", tmp_path / "ghost")
    assert not (tmp_path / "ghost").exists()


def test_bottleneck_on_model_without_hf_config():
    """No HF config to read hidden_size from: infer it, or say so -- never int(None) TypeError."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)
            self.mlp = nn.Sequential()
            self.mlp.up_proj, self.mlp.down_proj = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return x + self.mlp.down_proj(torch.relu(self.mlp.up_proj(x + self.o_proj(self.q_proj(x)))))

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for block in self.layers:
                x = block(x)
            return x

    model = splice.attach(Toy())
    try:
        model.add("b", Bottleneck(r=2))
    except SpliceError as error:
        assert "hidden" in str(error)
    else:
        x = torch.randn(2, 3, 8)
        model.activate("b")
        with torch.no_grad():
            assert model(x).shape == x.shape


# -- management: positive paths ---------------------------------------------------------------------------------


def _capture(module: nn.Module) -> tuple[list, object]:
    """A forward hook registered after splice's, so it sees the adapted output."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    return seen, handle


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_two_active_adapters_add_their_deltas(method):
    """On one projection whose input no adapter changes (layer 0's q), two additive deltas
    give output(a, b) - base == (output(a) - base) + (output(b) - base)."""
    make = (lambda: LoRA(r=2, targets=["q"], layers=[0])) if method == "lora" else (
        lambda: BitFit(targets=["q"], layers=[0]))
    inputs = tiny_inputs("llama")
    model = splice.attach(tiny_model("llama"))
    model.add("a", make())
    model.add("b", make())
    perturb(model.adapters["a"], seed=1)
    perturb(model.adapters["b"], seed=2)
    q0 = model.base.layers[0].self_attn.q_proj
    seen, handle = _capture(q0)

    outputs = {}
    for setup in [(), ("a",), ("b",), ("a", "b"), ("b", "a")]:
        if setup:
            model.activate(*setup)
        else:
            model.disable()
        final = main_output(model, inputs)
        outputs[setup] = (seen[-1], final)
    handle.remove()

    base = outputs[()][0]
    da, db = outputs[("a",)][0] - base, outputs[("b",)][0] - base
    assert da.abs().max() > 1e-3 and db.abs().max() > 1e-3
    torch.testing.assert_close(outputs[("a", "b")][0] - base, da + db, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs[("b", "a")][0], outputs[("a", "b")][0], atol=1e-5, rtol=0)
    both = outputs[("a", "b")][1]
    assert not torch.allclose(both, outputs[("a",)][1]) and not torch.allclose(both, outputs[("b",)][1])
    assert model.active == ("b", "a")


def test_disable_gives_base_output_exactly():
    inputs = tiny_inputs("gpt2")
    raw = tiny_model("gpt2")
    reference = main_output(raw, inputs)
    model = splice.attach(raw)
    for name, config in [("l", LoRA(targets="all-linear")), ("b", Bottleneck(placement="houlsby")), ("i", IA3())]:
        model.add(name, config)
        perturb(model.adapters[name])
    model.activate("l", "b", "i")
    assert not torch.allclose(main_output(model, inputs), reference)
    model.disable()
    assert model.active == ()
    assert torch.equal(main_output(model, inputs), reference)


def test_delete_removes_parameters_and_keeps_others_working():
    inputs = tiny_inputs("bert")
    model = splice.attach(tiny_model("bert"))
    base_out = main_output(model, inputs)
    model.add("keep", LoRA(targets=["q", "v"]))
    model.add("drop", LoRA(targets=["q", "v"]))
    perturb(model.adapters["keep"], seed=1)
    perturb(model.adapters["drop"], seed=2)
    model.activate("keep")
    keep_out = main_output(model, inputs)
    drop_params = {id(p) for p in model.adapters["drop"].parameters()}

    model.activate("keep", "drop")
    model.delete("drop")
    assert "drop" not in model.adapters
    assert model.active == ("keep",)
    assert not drop_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith("adapters.drop.") for k in model.state_dict())
    assert torch.equal(main_output(model, inputs), keep_out)
    with pytest.raises(AdapterError, match="drop"):
        model.activate("drop")

    model.delete("keep")
    assert model.active == () and list(model.adapters) == []
    assert torch.equal(main_output(model, inputs), base_out)
    model.add("again", IA3())  # hooks keep working for new adapters
    perturb(model.adapters["again"])
    model.activate("again")
    assert not torch.allclose(main_output(model, inputs), base_out)


def test_delete_merged_adapter_unmerges_it():
    inputs = tiny_inputs("llama")
    model = splice.attach(tiny_model("llama"))
    base_out = main_output(model, inputs)
    model.add("l", LoRA())
    perturb(model.adapters["l"])
    model.merge("l")
    model.delete("l")
    assert model.merged == ()
    torch.testing.assert_close(main_output(model, inputs), base_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_detach_gives_back_the_original_model(model_type):
    inputs = tiny_inputs(model_type)
    raw = tiny_model(model_type)
    reference = main_output(raw, inputs)
    state = state_copy(raw)
    model = splice.attach(raw)
    model.add("l", LoRA(targets="all-linear"))
    model.add("b", Bottleneck(placement="parallel"))
    model.add("i", IA3())
    for adapter in model.adapters.values():
        perturb(adapter)
    model.activate("l", "b", "i")
    assert not torch.allclose(main_output(model, inputs), reference)

    base = model.detach()
    assert base is raw
    assert hooked_modules(base) == [], "detach() must leave no hooks behind"
    base.eval()
    assert torch.equal(main_output(base, inputs), reference)
    assert_same_state(base, state)
    assert set(base.state_dict()) == set(state)


def test_detach_after_training_leaves_no_hooks():
    """train_adapter() puts a forward hook on the input embeddings (their output must require grad
    under reentrant gradient checkpointing); detach() must remove that one too."""
    inputs = tiny_inputs("llama")
    raw = tiny_model("llama")
    reference = main_output(raw, inputs)
    model = splice.attach(raw)
    model.add("l", LoRA())
    model.train_adapter("l")
    base = model.detach()
    assert hooked_modules(base) == [], "detach() must leave no hooks behind"
    base.eval()
    assert torch.equal(main_output(base, inputs), reference)
