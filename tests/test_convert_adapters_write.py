"""Writing AdapterHub bottleneck folders and reading AdapterHub fusion folders, without the `adapters` library."""

import json

import pytest
import torch
import torch.nn.functional as F

import splice
from splice.convert.bottleneck import BN_DEFAULTS

from helpers import assert_same_state, main_output, perturb, state_copy
from tiny_models import tiny_inputs, tiny_model

META_KEYS = {"config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"}


@pytest.mark.parametrize("arch, kind, prefix", [("bert", "base", "encoder.layer.{}.{}.adapters.task."),
                                                ("bert", "classification", "bert.encoder.layer.{}.{}.adapters.task."),
                                                ("llama", "lm", "model.layers.{}.{}_adapters.adapters.task.")])
@pytest.mark.parametrize("config, options", [
    (dict(r=4, residual_input=True), dict(original_ln_before=True, is_parallel=False, reduction_factor=8)),
    (dict(r=5, placement="houlsby", non_linearity="swish", ln_before=True, scale=2.0),
     dict(original_ln_before=False, mh_adapter=True, ln_before=True, scaling=2.0, non_linearity="swish")),
    (dict(r=8, placement="parallel", residual_input=True, scale=4.0, layers=(1,)),
     dict(is_parallel=True, original_ln_before=False, reduction_factor=4, scaling=4.0, leave_out=[0])),
    (dict(r=4, residual_input=True, ln_before=True, ln_after=True, non_linearity="gelu"),
     dict(ln_before=True, ln_after=True, non_linearity="gelu")),
])
def test_written_folder_layout_and_round_trip(arch, kind, prefix, config, options, tmp_path):
    model = splice.attach(tiny_model(arch, kind))
    model.add("task", splice.Bottleneck(**config))
    perturb(model.adapters["task"], std=0.3)
    model.save("task", tmp_path / "out", format="adapters")
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "pytorch_adapter.bin"]
    meta = json.loads((folder / "adapter_config.json").read_text())
    assert set(meta) == META_KEYS and meta["version"] == "adapters.1.3.0" and meta["name"] == "task"
    assert (meta["model_type"], meta["hidden_size"], meta["model_class"]) == (arch, 32, type(model.base).__name__)
    assert set(meta["config"]) == set(BN_DEFAULTS)
    assert {k: meta["config"][k] for k in options} == options
    tensors = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    places = ("attention.output", "output") if arch == "bert" else ("attention", "output")
    layers = config.get("layers", (0, 1))
    roles = ("attn", "ffn") if config.get("placement") == "houlsby" else ("ffn",)
    expected_prefixes = {prefix.format(i, places[role == "ffn"]) for i in layers for role in roles}
    assert {k[: k.index(".task.") + 6] for k in tensors} == expected_prefixes
    inputs = tiny_inputs(arch, padded=True)
    model.activate("task")
    expected = main_output(model, inputs)
    name = model.load(folder, name="back")
    back, mine = model.adapters[name].config.to_dict(), model.adapters["task"].config.to_dict()
    assert {**back, "roles": None} == {**mine, "roles": None, "init": "bert"}
    assert list(model.adapters[name].sites) == list(model.adapters["task"].sites)
    model.activate(name)
    assert torch.equal(main_output(model, inputs), expected)


@pytest.mark.parametrize("arch, config, words", [
    ("bert", splice.LoRA(r=2), ["'lora'", "bottleneck adapters only"]),
    ("bert", splice.Bottleneck(r=4, placement="parallel"), ["residual stream", "residual_input=True"]),
    ("bert", splice.Bottleneck(r=4, ln_after=True, scale=2.0), ["ln_after", "scale"]),
    ("gpt2", splice.Bottleneck(r=4), ["'gpt2'", "placement"]),
])
def test_what_adapterhub_cannot_express_is_refused(arch, config, words, tmp_path):
    model = splice.attach(tiny_model(arch))
    model.add("x", config)
    with pytest.raises(splice.AdapterError) as caught:
        model.save("x", tmp_path / "x", format="adapters")
    for word in words:
        assert word in str(caught.value)
    assert not (tmp_path / "x").exists()


def test_splice_heads_are_refused(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("x", splice.Bottleneck(r=4), head=splice.heads.Classification(num_labels=2))
    with pytest.raises(splice.AdapterError, match="splice head"):
        model.save("x", tmp_path / "x", format="adapters")


# -- AdapterFusion: hand-written folders against a plain-torch formula ----------------------------------------


def fusion_folder(tmp_path, model, options, gen):
    """Two seq_bn adapters (written by splice) and a fusion over them, with AdapterHub's names."""
    for name in ("a1", "a2"):
        model.add(name, splice.Bottleneck(r=4 if name == "a1" else 8, residual_input=True, scale=1.5))
        perturb(model.adapters[name], seed=len(name) + int(name[1]), std=0.3)
        model.save(name, tmp_path / name, format="adapters")
        model.delete(name)
    weights = {}
    for layer in (0, 1):
        prefix = f"encoder.layer.{layer}.output.adapter_fusion_layer.a1,a2."
        for module in ("query", "key", "value"):
            if options.get(module, True):
                weights[prefix + module + ".weight"] = torch.randn(32, 32, generator=gen) * 0.3
                if module != "value":  # AdapterHub's value projection has no bias
                    weights[prefix + module + ".bias"] = torch.randn(32, generator=gen) * 0.3
    (tmp_path / "fusion").mkdir()
    torch.save(weights, tmp_path / "fusion" / "pytorch_model_adapter_fusion.bin")
    config = {"key": True, "query": True, "value": True, "query_before_ln": False, "regularization": True,
              "residual_before": False, "temperature": False, "value_before_softmax": True,
              "value_initialized": True, "dropout_prob": None, **options}
    meta = {"adapter_names": ["a1", "a2"], "config": config, "hidden_size": 32, "model_class": "BertModel",
            "model_name": "", "model_type": "bert", "name": "a1,a2", "version": "adapters.1.3.0"}
    (tmp_path / "fusion" / "adapter_fusion_config.json").write_text(json.dumps(meta))
    return weights


def reference_output(base, tmp_path, weights, options, inputs):
    """AdapterHub's fusion at BertOutput, written out in plain torch with a forward hook (no splice)."""
    bins = [torch.load(tmp_path / n / "pytorch_adapter.bin", weights_only=True) for n in ("a1", "a2")]

    def hook(module, args, output):
        layer = next(i for i, block in enumerate(base.encoder.layer) if block.output is module)
        h, x, norm = module.dense(args[0]), args[1], module.LayerNorm
        a = norm(h + x)
        ups = []
        for b in bins:
            p = f"encoder.layer.{layer}.output.adapters."
            p += next(k for k in b if k.startswith(p)).split(".")[5] + "."
            ups.append(1.5 * F.linear(F.relu(F.linear(a, b[p + "adapter_down.0.weight"], b[p + "adapter_down.0.bias"])),
                                      b[p + "adapter_up.weight"], b[p + "adapter_up.bias"]))
        u = torch.stack(ups, dim=2)  # [batch, tokens, adapters, hidden]
        if options.get("residual_before"):
            u = u + h[:, :, None, :]
        f = f"encoder.layer.{layer}.output.adapter_fusion_layer.a1,a2."
        query = h if options.get("query_before_ln") else a
        q = F.linear(query, weights[f + "query.weight"], weights[f + "query.bias"]) if options.get("query", True) \
            else query
        k = F.linear(u, weights[f + "key.weight"], weights[f + "key.bias"]) if options.get("key", True) else u
        v = F.linear(u, weights[f + "value.weight"]) if options.get("value", True) else u
        p = torch.softmax(torch.einsum("btd,btnd->btn", q, k), dim=-1)
        mixed = torch.einsum("btn,btnd->btd", p, v)
        if not options.get("residual_before"):
            mixed = mixed + h
        return norm(mixed + x)

    handles = [block.output.register_forward_hook(hook) for block in base.encoder.layer]
    try:
        with torch.no_grad():
            return base(**inputs)[0]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("options", [{}, {"query_before_ln": True}, {"residual_before": True},
                                     {"value": False, "regularization": False, "value_initialized": False},
                                     {"query": False, "key": False}, {"value_before_softmax": False}])
def test_adapterhub_fusion_matches_its_formula(options, tmp_path):
    base = tiny_model("bert")
    model = splice.attach(base)
    weights = fusion_folder(tmp_path, model, options, torch.Generator().manual_seed(3))
    inputs = tiny_inputs("bert", padded=True)
    model.disable()
    expected = reference_output(base, tmp_path, weights, options, inputs)
    model.load(tmp_path / "a1")
    model.load(tmp_path / "a2")
    name = model.load(tmp_path / "fusion")
    config = model.adapters[name].config
    assert (config.adapters, config.roles) == (("a1", "a2"), ("ffn_residual",))
    model.activate(name)
    out = main_output(model, inputs)
    assert (out - expected).abs().max() < 1e-4  # float32 reductions in another order
    model.activate("a1")
    assert (main_output(model, inputs) - expected).abs().max() > 1e-2  # the fusion matters
    model.save(name, tmp_path / "splice_copy")  # splice's own format keeps the AdapterHub options
    model.activate(name)
    model.delete(name)
    again = model.load(tmp_path / "splice_copy")
    assert model.adapters[again].config == config
    model.activate(again)
    assert torch.equal(main_output(model, inputs), out)


@pytest.mark.parametrize("change, words", [
    ({"config": {"temperature": True}}, ["temperature=true", "50"]),
    ({"config": {"frobnicate": 1}}, ["frobnicate", "unknown"]),
    ({"adapter_names": ["a1", "zz"]}, ["'zz'", "Load the fused adapters first"]),
])
def test_fusion_options_splice_does_not_implement_are_refused(change, words, tmp_path):
    base = tiny_model("bert")
    model = splice.attach(base)
    fusion_folder(tmp_path, model, {}, torch.Generator().manual_seed(3))
    model.load(tmp_path / "a1")
    model.load(tmp_path / "a2")
    path = tmp_path / "fusion" / "adapter_fusion_config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(change.get("config", {}))
    meta.update({k: v for k, v in change.items() if k != "config"})
    path.write_text(json.dumps(meta))
    before = state_copy(base)
    with pytest.raises(splice.CheckpointError) as caught:
        model.load(tmp_path / "fusion")
    for word in words:
        assert word in str(caught.value)
    assert list(model.adapters) == ["a1", "a2"]
    assert_same_state(base, before)


def test_default_fusion_is_unchanged_and_round_trips(tmp_path):
    model = splice.attach(tiny_model("bert"))
    for name in ("a", "b"):
        model.add(name, splice.Bottleneck(r=4))
        perturb(model.adapters[name], seed=ord(name))
    fusion = model.add_fusion("f", ["a", "b"])
    assert (fusion.config.query_from, fusion.config.attend) == ("output", "outputs")
    perturb(fusion, seed=5)
    inputs = tiny_inputs("bert")
    model.activate("f")
    out = main_output(model, inputs)
    model.save("f", tmp_path / "f")
    config = json.loads((tmp_path / "f" / "adapter.json").read_text())["config"]
    assert (config["query_from"], config["attend"]) == ("output", "outputs")
    model.delete("f")
    model.activate(model.load(tmp_path / "f"))
    assert torch.equal(main_output(model, inputs), out)
