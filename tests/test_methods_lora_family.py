"""DoRA, VeRA and LoRA's PiSSA / OLoRA starts, against the real peft (a test dependency).

The method matrix (test_methods.py) checks the contract of the ``dora`` and ``vera`` recipes on
every architecture; here: the peer fixtures, adapters written by peft with other options and
models, splice -> peft -> splice round trips, the starts, per-row routing, merges, refusals.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import splice
from splice import CheckpointError, ConfigError, DoRA, LoRA, VeRA

from helpers import PEERS, main_output, peft_folder, perturb, randomise, rows_alone, state_copy
from tiny_models import tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

TOLERANCE = 1e-4


@pytest.mark.parametrize("case", ["peft_llama_dora", "peft_llama_vera"])
def test_peer_fixture_reproduces_output(case):
    folder = PEERS / case
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder / "base", attn_implementation="eager").eval())
    assert (main_output(model, inputs) - expected["base_out"]).abs().max() < TOLERANCE
    model.activate(model.load(folder / "adapter"))
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE


def test_vera_draws_peft_projections_from_the_key():
    """Without save_projection the projections come from the key alone: the fixture's saved ones must match."""
    folder = PEERS / "peft_llama_vera"
    saved = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder / "base"))
    model.add("drawn", VeRA(r=8, targets=("q", "v"), projection_prng_key=0))
    assert torch.equal(model.adapters["drawn"].shared.vera_A, saved["base_model.vera_A"])
    assert torch.equal(model.adapters["drawn"].shared.vera_B, saved["base_model.vera_B"])


# -- written by peft, read by splice ---------------------------------------------------------------------

PEFT_CASES = {
    "bert-dora-ffn": ("bert", "base", lambda: peft.LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules=["query", "value", "intermediate.dense"])),
    "gpt2-dora-fused": ("gpt2", "lm", lambda: peft.LoraConfig(
        r=4, use_dora=True, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True)),
    "llama-dora-rslora-patterns": ("llama", "lm", lambda: peft.LoraConfig(
        r=4, lora_alpha=16, use_dora=True, use_rslora=True, target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 3})),
    "bert-vera-key-only": ("bert", "base", lambda: peft.VeraConfig(
        r=6, target_modules=["query", "value"], save_projection=False, projection_prng_key=7, d_initial=0.3)),
    "gpt2-vera-fused": ("gpt2", "lm", lambda: peft.VeraConfig(r=8, target_modules=["c_attn"],
                                                              fan_in_fan_out=True)),
    "llama-vera-one-layer": ("llama", "lm", lambda: peft.VeraConfig(
        r=4, target_modules=["q_proj", "down_proj"], layers_to_transform=[1])),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_written_adapter_gives_peft_outputs(tmp_path, case):
    model_type, head, make_config = PEFT_CASES[case]
    folder, want = peft_folder(tmp_path, model_type, head, make_config())
    model = splice.attach(tiny_model(model_type, head))
    base = main_output(model, tiny_inputs(model_type, padded=True))
    model.activate(model.load(folder))
    out = main_output(model, tiny_inputs(model_type, padded=True))
    assert (out - want).abs().max() < TOLERANCE
    assert (out - base).abs().max() > 10 * TOLERANCE


def test_peft_options_become_splice_options(tmp_path):
    folder, _ = peft_folder(tmp_path, "bert", "base", PEFT_CASES["bert-vera-key-only"][2]())
    model = splice.attach(tiny_model("bert"))
    adapter = model.adapters[model.load(folder)]
    assert adapter.config == VeRA(r=6, targets=("q", "v"), save_projection=False, projection_prng_key=7,
                                  d_initial=0.3)
    folder, _ = peft_folder(tmp_path / "d", "llama", "lm", PEFT_CASES["llama-dora-rslora-patterns"][2]())
    model = splice.attach(tiny_model("llama", "lm"))
    assert model.adapters[model.load(folder)].config == DoRA(
        r=4, alpha=16, targets=("q", "v", "up"), use_rslora=True, rank_pattern={"v": 2}, alpha_pattern={"up": 3})


@pytest.mark.parametrize("change,words", [
    ({"bias": "all"}, ["bias='all'"]),
    ({"vera_dropout": 0.1, "some_new_option": 3}, ["some_new_option=3"]),
])
def test_peft_vera_options_splice_lacks_are_refused_by_name(tmp_path, change, words):
    folder, _ = peft_folder(tmp_path, "bert", "base", PEFT_CASES["bert-vera-key-only"][2]())
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    model = splice.attach(tiny_model("bert"))
    with pytest.raises(CheckpointError) as caught:
        model.load(folder)
    assert all(word in str(caught.value) for word in words) and not model.adapters


def test_peft_dora_without_magnitudes_is_refused(tmp_path):
    folder, _ = peft_folder(tmp_path, "bert", "base", PEFT_CASES["bert-dora-ffn"][2]())
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": False}))
    model = splice.attach(tiny_model("bert"))
    with pytest.raises(CheckpointError, match="lora_magnitude_vector"):
        model.load(folder)  # a plain LoRA reader meets the magnitudes and says what they are not


# -- written by splice, read by peft (and back) -------------------------------------------------------------

SPLICE_CASES = {
    "bert-dora": ("bert", "base", DoRA(r=4, alpha=8, targets=("q", "v", "down"))),
    "gpt2-dora-fused": ("gpt2", "lm", DoRA(r=4, targets=("q", "k", "v", "up"))),
    "llama-dora-patterns": ("llama", "lm", DoRA(r=4, targets="all-linear", rank_pattern={"v": 2}, use_rslora=True)),
    "bert-vera": ("bert", "base", VeRA(r=8, targets=("q", "v", "up"))),
    "llama-vera-key-only": ("llama", "lm", VeRA(r=4, targets=("q", "down"), save_projection=False,
                                                projection_prng_key=5)),
    "gpt2-lora-pissa-fused": ("gpt2", "lm", LoRA(r=4, alpha=8, targets=("q", "v"), init="pissa")),
    "llama-lora-olora-rslora": ("llama", "lm", LoRA(r=4, alpha=8, targets=("q", "up"), init="olora",
                                                    use_rslora=True, rank_pattern={"up": 2})),
}


@pytest.mark.parametrize("case", list(SPLICE_CASES))
def test_splice_written_peft_loads_in_peft_and_back(tmp_path, case):
    model_type, head, config = SPLICE_CASES[case]
    base = tiny_model(model_type, head)
    inputs = tiny_inputs(model_type, padded=True)
    model = splice.attach(copy.deepcopy(base))
    model.add("x", config)
    randomise(model.adapters["x"], seed=1)
    model.activate("x")
    want = main_output(model, inputs)
    model.save("x", tmp_path / "out", format="peft")

    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "out").eval()
    assert (main_output(peft_model, inputs) - want).abs().max() < TOLERANCE

    again = splice.attach(tiny_model(model_type, head))
    again.activate(again.load(tmp_path / "out"))
    assert (main_output(again, inputs) - want).abs().max() < TOLERANCE


def test_vera_fused_roles_with_their_own_lambda_d_are_refused_for_peft(tmp_path):
    model = splice.attach(tiny_model("gpt2"))
    model.add("x", VeRA(r=4, targets=("q", "v")))
    perturb(model.adapters["x"])
    with pytest.raises(splice.AdapterError, match="lambda_d"):
        model.save("x", tmp_path / "out", format="peft")
    assert not (tmp_path / "out").exists()


# -- PiSSA / OLoRA: the same start as peft, the base untouched --------------------------------------------


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_principal_start_equals_peft_and_leaves_the_base_alone(tmp_path, init):
    """peft rewrites W to W - s·B₀A₀; splice keeps W and subtracts s·B₀A₀ itself: same pairs, same outputs,
    and peft's converted save (path_initial_model_for_weight_conversion) loads as a plain LoRA on the plain base."""
    inputs = tiny_inputs("llama", padded=True)
    peft_model = peft.get_peft_model(tiny_model("llama", "lm"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init))
    peft_model.peft_config["default"].init_lora_weights = True  # peft's recipe: save the start as a plain LoRA
    peft_model.save_pretrained(tmp_path / "start")
    peft_model.peft_config["default"].init_lora_weights = init

    model = splice.attach(tiny_model("llama", "lm"))
    before = state_copy(model.base)
    reference = main_output(model, inputs)
    model.add("x", LoRA(r=4, alpha=8, targets=("q", "v"), init=init))
    model.activate("x")
    assert torch.equal(main_output(model, inputs), reference), "the start must not change the output"
    for site, delta in model.adapters["x"].items():
        path = model.anatomy.module_path(site.module)
        theirs = peft_model.base_model.model.get_submodule(path)
        torch.testing.assert_close(delta.lora_A.weight, theirs.lora_A["default"].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(delta.lora_B.weight, theirs.lora_B["default"].weight, atol=1e-5, rtol=1e-4)
        # training moves the trained pair in both, the same way
        with torch.no_grad():
            for mine, peers in ((delta.lora_A.weight, theirs.lora_A["default"].weight),
                                (delta.lora_B.weight, theirs.lora_B["default"].weight)):
                step = torch.randn(mine.shape, generator=torch.Generator().manual_seed(mine.numel())) * 0.1
                mine.add_(step)
                peers.add_(step)
    want = main_output(peft_model.eval(), inputs)
    assert (main_output(model, inputs) - want).abs().max() < TOLERANCE
    assert (want - reference).abs().max() > 10 * TOLERANCE
    assert all(torch.equal(v, before[k]) for k, v in model.base.state_dict().items())

    peft_model.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=tmp_path / "start")
    saved = json.loads((tmp_path / "converted" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # a plain LoRA of twice the rank
    plain = splice.attach(tiny_model("llama", "lm"))
    plain.activate(plain.load(tmp_path / "converted"))
    assert (main_output(plain, inputs) - want).abs().max() < TOLERANCE


def test_principal_start_saves_merges_and_refuses_what_it_cannot(tmp_path):
    inputs = tiny_inputs("bert", padded=True)
    model = splice.attach(tiny_model("bert"))
    before = state_copy(model.base)
    model.add("x", LoRA(r=4, targets=("q", "v"), init="pissa_niter_4"))
    perturb(model.adapters["x"])
    model.activate("x")
    want = main_output(model, inputs)
    model.save("x", tmp_path / "x")
    fresh = splice.attach(tiny_model("bert"))
    fresh.activate(fresh.load(tmp_path / "x"))
    assert torch.equal(main_output(fresh, inputs), want)
    assert "layers.0.q.fixed_A" in load_file(str(tmp_path / "x" / "adapter.safetensors"))
    model.merge("x")
    model.disable()
    torch.testing.assert_close(main_output(model, inputs), want, atol=1e-5, rtol=1e-5)
    model.unmerge("x")
    for key, tensor in model.base.state_dict().items():
        torch.testing.assert_close(tensor, before[key], atol=1e-6, rtol=1e-6)
    with pytest.raises(splice.AdapterError, match="fixed pair"):
        model.average("avg", ["x", "x"], [0.5, 0.5])
    with pytest.raises(ConfigError, match="r <= min"):
        splice.attach(tiny_model("bert")).add("big", LoRA(r=40, init="olora"))
    with pytest.raises(ConfigError, match="'pissa_niter_<n>'"):
        LoRA(init="svd")
    with pytest.raises(ConfigError, match="DoRA.init"):
        DoRA(init="pissa")


# -- in the model: routing, merges in order, composition ------------------------------------------------------

FAMILY = {
    "dora": lambda: DoRA(r=4, alpha=8, targets=("q", "v", "down")),
    "vera": lambda: VeRA(r=8, targets=("q", "v", "down")),
    "pissa": lambda: LoRA(r=4, alpha=8, targets=("q", "v"), init="pissa"),
    "olora": lambda: LoRA(r=4, alpha=8, targets=("q", "v"), init="olora"),
}


@pytest.mark.parametrize("method", list(FAMILY))
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_per_row_routing_equals_rows_run_alone(arch, method):
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch, padded=True)
    inputs = {k: torch.cat([v, v.flip(0)]) for k, v in inputs.items()}  # four rows, two of them padded
    for name, seed in (("a", 1), ("b", 2)):
        model.add(name, FAMILY[method]())
        perturb(model.adapters[name], seed=seed)
    routes = ["a", "__base__", "b", "a"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=routes)[0]
    torch.testing.assert_close(mixed, rows_alone(model, inputs, routes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", list(FAMILY))
def test_in_composition_blocks(method):
    model = splice.attach(tiny_model("llama"))
    inputs = tiny_inputs("llama", padded=True)
    model.add("a", FAMILY[method]())
    model.add("lora", LoRA(r=2, targets=("q", "v")))
    perturb(model.adapters["a"], seed=1)
    perturb(model.adapters["lora"], seed=2)
    model.activate(splice.Stack("a", "lora"))
    stacked = main_output(model, inputs)
    model.activate("a")
    alone = main_output(model, inputs)
    assert (stacked - alone).abs().max() > 1e-4
    model.activate(splice.Average("a", "a", weights=[0.5, 0.5]))
    torch.testing.assert_close(main_output(model, inputs), alone, atol=1e-5, rtol=1e-5)


def test_vera_in_a_union_reads_its_projections(tmp_path):
    model = splice.attach(tiny_model("bert"))
    inputs = tiny_inputs("bert", padded=True)
    model.add("u", splice.Union(VeRA(r=4, targets=("q",)), splice.IA3()))
    perturb(model.adapters["u"])
    model.activate("u")
    want = main_output(model, inputs)
    model.save("u", tmp_path / "u")
    fresh = splice.attach(tiny_model("bert"))
    fresh.activate(fresh.load(tmp_path / "u"))
    assert torch.equal(main_output(fresh, inputs), want)


def test_vera_projections_never_train_and_save_projection_false_saves_none(tmp_path):
    model = splice.attach(tiny_model("llama"))
    inputs = tiny_inputs("llama")
    model.add("v", VeRA(r=8, targets=("q", "v"), save_projection=False, projection_prng_key=3))
    projections = {k: v.clone() for k, v in model.adapters["v"].shared.state_dict(keep_vars=True).items()}
    assert not projections, "save_projection=False: the projections are not part of the saved state"
    drawn = model.adapters["v"].shared.vera_A.clone()
    model.train_adapter("v")
    main = model(**inputs)[0]
    main.pow(2).mean().backward()
    assert model.adapters["v"].num_parameters() == 2 * (8 + 8) + 2 * 32 + 2 * 16  # λ_d per site, λ_b per output
    assert torch.equal(model.adapters["v"].shared.vera_A, drawn)
    model.save("v", tmp_path / "v")
    assert not any(k.startswith("shared.") for k in load_file(str(tmp_path / "v" / "adapter.safetensors")))


def test_dora_merge_order_is_enforced():
    """DoRA rescales rows, so an adapter merged after it must come out first."""
    model = splice.attach(tiny_model("bert"))
    model.add("d", DoRA(r=2, targets=("q",)))
    model.add("l", LoRA(r=2, targets=("q",)))
    perturb(model.adapters["d"])
    perturb(model.adapters["l"])
    model.merge("d")
    model.merge("l")
    with pytest.raises(splice.AdapterError):
        model.unmerge("d")


@pytest.mark.parametrize("config", [DoRA(r=2, targets=("q",)), LoRA(r=2, targets=("q",), init="pissa")])
def test_methods_reading_the_base_weight_refuse_a_packed_one_they_cannot_dequantize(config):
    """DoRA's norm and PiSSA's start read W; a packed weight of no quantized layer type splice knows is refused by
    name, the model unchanged (a bitsandbytes/torchao one is dequantized: tests/test_quantized.py)."""
    base = tiny_model("bert")
    query = base.encoder.layer[0].attention.self.query
    query.weight = torch.nn.Parameter(torch.zeros(query.weight.shape, dtype=torch.int8), requires_grad=False)
    model = splice.attach(base)
    with pytest.raises(splice.AdapterError, match="cannot dequantize"):
        model.add("x", config)
    assert not model.adapters


@pytest.mark.parametrize("config", [DoRA(r=2, targets=("q", "v")), VeRA(r=4, targets=("q", "v"))],
                         ids=["dora", "vera"])
def test_splice_head_is_written_as_the_task_models_classifier(tmp_path, config):
    """``splice train --method dora|vera``'s classifier goes to peft as the task model's own (as for LoRA)."""
    from test_convert_peft_heads import inputs, peft_logits
    from transformers import AutoModelForSequenceClassification

    model = splice.attach(tiny_model("roberta"))
    model.add("task", config, head=splice.heads.Classification(num_labels=3))
    perturb(model.adapters["task"], seed=3)
    model.eval().activate("task")
    with torch.no_grad():
        ours = model(**inputs()).logits
    model.save("task", tmp_path / "peft", format="peft")
    theirs, plain = peft_logits(model.base, tmp_path / "peft", AutoModelForSequenceClassification, 3, tmp_path)
    assert (ours - theirs).abs().max() < 1e-5
    assert (plain - theirs).abs().max() > 1e-2
