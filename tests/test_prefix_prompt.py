"""Prompt tuning, prefix tuning and unions of methods, on every architecture where they apply.

Prefix tuning needs self-attention (all 17 tiny architectures); prompt tuning needs
token inputs (all but ViT). Checks: training moves only the adapter and leaves the
base bit-identical; save -> load into a fresh model reproduces outputs; padding
does not change a row; a prefix whose slots are all masked is the base model
(catches relative-position bugs); gradient checkpointing gives the same
gradients; ``generate`` returns no soft tokens and equals greedy recomputation;
per-row routing mixes them with other adapters exactly.
"""

import json
import warnings

import pytest
import torch

import splice
from splice.methods import BUILT_IN

from helpers import TINY_OPTIONS, assert_same_state, descend, greedy, perturb, state_copy
from tiny_models import ARCHITECTURES, DECODERS, tiny_config, tiny_inputs, tiny_model

METHODS = {
    "prompt": lambda: splice.PromptTuning(length=3),
    "prefix": lambda: splice.PrefixTuning(length=3),
    "prefix_mlp": lambda: splice.PrefixTuning(length=2, projection_dim=8),
    "embedded": lambda: splice.PromptTuning(length=3, insert="embedded"),  # after the embedding block
}
EMBEDDED_ARCHS = ("bert", "roberta", "xlm-roberta", "electra")


def test_every_soft_method_of_the_registry_is_covered():
    """The cases below cover every method whose deltas add soft positions, as the registry has them."""
    anatomy = splice.Anatomy(tiny_model("llama"))
    soft = set()
    for cls in BUILT_IN.values():
        for name, recipe in cls.training_recipes().items():
            config = recipe.config(TINY_OPTIONS.get(name, {}))
            if any(config.build(site, anatomy).stage == "soft" for site in config.sites(anatomy)):
                soft.add(type(config))
    covered = {type(make()) for make in METHODS.values()}
    assert soft and soft - {splice.Union} <= covered, soft - covered  # Union's soft members are covered themselves
PROMPT_ARCHS = [a for a in ARCHITECTURES if a != "vit"]
CASES = ([(a, "prompt") for a in PROMPT_ARCHS] + [(a, "prefix") for a in ARCHITECTURES]
         + [(a, "prefix_mlp") for a in ("bert", "llama", "t5")] + [(a, "embedded") for a in EMBEDDED_ARCHS])


def output(model, inputs):
    """Every per-position output a test compares: encoder and decoder states for T5."""
    out = model(**inputs)
    if getattr(out, "encoder_last_hidden_state", None) is not None:
        return torch.cat([out.last_hidden_state, out.encoder_last_hidden_state], 1)
    return out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out[0]


def adapted(arch, method, head="base", seed=0):
    model = splice.attach(tiny_model(arch, head=head))
    model.add("soft", METHODS[method]() if isinstance(method, str) else method)
    perturb(model.adapters["soft"], seed=seed, std=0.5)
    model.activate("soft")
    return model


def real_rows(arch, inputs, row):
    """Row ``row`` without its padding (pads are on the left for decoders, on the right otherwise)."""
    n = int(inputs["attention_mask"][row].sum())
    cut = slice(-n, None) if arch in DECODERS else slice(0, n)
    return {k: v[row : row + 1, cut] if k in ("input_ids", "attention_mask") else v[row : row + 1]
            for k, v in inputs.items()}, cut


@pytest.mark.parametrize("arch,method", CASES)
def test_train_save_load(arch, method, tmp_path):
    model = adapted(arch, method)
    inputs = tiny_inputs(arch, padded=arch != "vit")
    with torch.no_grad():
        model.disable()
        base = output(model, inputs)
        model.activate("soft")
        assert output(model, inputs).shape == base.shape, "soft positions must not reach the outputs"
    before = state_copy(model.base)
    model.train_adapter("soft")
    descend(model, lambda: output(model, inputs).pow(2).mean())
    assert all(p.grad is not None for p in model.adapters["soft"].parameters())
    model.eval()
    assert_same_state(model.base, before)
    with torch.no_grad():
        expected = output(model, inputs)
    assert not torch.allclose(expected, base)
    model.save("soft", tmp_path / "soft")
    saved = json.loads((tmp_path / "soft" / "adapter.json").read_text())["config"]
    assert saved.get("projection_dim") is None, "the reparameterisation is folded away at save"
    fresh = splice.attach(tiny_model(arch))
    fresh.load(tmp_path / "soft")
    fresh.activate("soft")
    with torch.no_grad():
        torch.testing.assert_close(output(fresh, inputs), expected, atol=1e-5, rtol=1e-5)
        fresh.disable()
        assert torch.equal(output(fresh, inputs), base), "disable() gives the base back"


@pytest.mark.parametrize("arch,method", [c for c in CASES if c[0] != "vit"])
def test_padding_does_not_change_a_row(arch, method):
    model = adapted(arch, method)
    inputs = tiny_inputs(arch, padded=True)
    with torch.no_grad():
        padded = model(**inputs)[0]
        single, cut = real_rows(arch, inputs, 1)
        alone = model(**single)[0]
    torch.testing.assert_close(padded[1:, cut if arch != "t5" else slice(None)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "vit"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_masked_soft_slots_equal_the_base(arch, method):
    """A row routed to ``__base__`` beside a prompt/prefix row has every soft slot masked: it is the base."""
    model = adapted(arch, method)
    inputs = tiny_inputs(arch, padded=True)
    if method == "prompt" and model.anatomy.positions == "fixed":  # it cannot be told to skip masked slots
        with pytest.raises(splice.AdapterError, match="different lengths cannot share a batch"):
            model(**inputs, adapter_names=["soft", "__base__"])
        return
    with torch.no_grad():
        mixed = output(model, {**inputs, "adapter_names": ["soft", "__base__"]})
        model.disable()
        if arch == "t5":
            single, cut = {k: v[1:] for k, v in inputs.items()}, slice(None)
        else:  # unpadded: positions count from the first real token, as the soft slots' mask makes them
            single, cut = real_rows(arch, inputs, 1)
        base = output(model, single)
    torch.testing.assert_close(mixed[1:, cut], base, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("arch,method", [
    (arch, method) for arch in ["bert", "deberta-v2", "gpt2", "gpt_neox", "llama", "opt", "t5", "vit"]
    for method in ["prefix", "prompt"] if (arch, method) != ("vit", "prompt")  # refused: see test_bad_inputs
])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_same_gradients(arch, method, reentrant):
    grads = []
    for checkpointing in (False, True):
        model = adapted(arch, method)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train_adapter("soft")
        output(model, tiny_inputs(arch, padded=arch != "vit")).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.adapters["soft"].named_parameters()})
    for name, grad in grads[0].items():
        assert grads[1][name] is not None, f"{name}: checkpointed blocks must still reach the soft tokens"
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", DECODERS + ("t5",))
@pytest.mark.parametrize("method", ["prefix", "prompt", "both"])
def test_generate_returns_no_soft_tokens_and_equals_recompute(arch, method):
    model = splice.attach(tiny_model(arch, head="lm"))
    names = ["prefix", "prompt"] if method == "both" else [method]
    for seed, name in enumerate(names):
        model.add(name, METHODS[name]())
        perturb(model.adapters[name], seed=seed, std=1.0)
    model.activate(*names)
    inputs = tiny_inputs(arch, padded=True)
    inputs.pop("decoder_input_ids", None)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
        if arch == "t5":
            expected = greedy(model, {**inputs, "decoder_input_ids": True}, 4)
        else:
            expected = greedy(model, inputs, 4)
    assert generated.shape == expected.shape
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mam_preset_generate_equals_recompute(arch):
    """The MAM preset's 30 prefix slots, given twice on transformers 5.24+, ran GPT-2 past its 64 positions."""
    model = splice.attach(tiny_model(arch, head="lm"))
    model.add("mam", splice.presets.mam())
    perturb(model.adapters["mam"], std=0.5)
    model.activate("mam")
    inputs = tiny_inputs(arch, padded=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
        expected = greedy(model, inputs, 4)
    assert torch.equal(generated, expected)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "t5"])
def test_prefix_passes_the_cache_by_the_name_the_release_takes(arch):
    """transformers 5.24 renamed ``past_key_values`` to ``cache``: a call given both silently drops the first.

    Forward, checkpointed backward and generate must use the model's own name (GPT-NeoX's attention:
    ``layer_past``), so no deprecation warning about the cache arguments is raised.
    """
    model = adapted(arch, "prefix", head="lm")
    inputs = tiny_inputs(arch, padded=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train_adapter("soft")
        model(**inputs).logits.pow(2).mean().backward()
        model.eval()
        inputs.pop("decoder_input_ids", None)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    renamed = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert not renamed, renamed[0]


def test_cache_argument_is_read_from_the_signature():
    """Each module's own name (a model not yet moved to ``cache`` keeps its own); none named: its release's."""
    from torch import nn

    from splice.anatomy.calls import cache_argument

    class Old(nn.Module):
        def forward(self, hidden_states, past_key_values=None): ...

    class NeoX(nn.Module):
        def forward(self, hidden_states, layer_past=None): ...

    class Unnamed(nn.Module):
        def forward(self, *args, **kwargs): ...

    assert (cache_argument(Old()), cache_argument(NeoX())) == ("past_key_values", "layer_past")
    assert cache_argument(Unnamed()) == cache_argument(tiny_model("llama", head="lm"))  # the release's own name


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_beams_and_several_sequences_get_the_soft_tokens_on_every_copy(arch):
    model = splice.attach(tiny_model(arch, head="lm"))
    model.add("prefix", splice.PrefixTuning(length=3))
    model.add("prompt", splice.PromptTuning(length=2))
    model.activate("prefix", "prompt")
    inputs = tiny_inputs(arch)
    inputs.pop("decoder_input_ids", None)
    kwargs = {"max_new_tokens": 3, "pad_token_id": 0}
    with torch.no_grad():
        beams = model.generate(**inputs, num_beams=2, do_sample=False, **kwargs)
        copies = model.generate(**inputs, num_return_sequences=2, do_sample=True, top_k=1, **kwargs)  # greedy
        single = model.generate(**inputs, do_sample=False, **kwargs)
    assert beams.shape == single.shape
    assert torch.equal(copies[::2], single) and torch.equal(copies[1::2], single)


ROUTED = {
    "prefix": splice.PrefixTuning(length=3),
    "prefix2": splice.PrefixTuning(length=2),
    "prompt": splice.PromptTuning(length=3),
    "prompt1": splice.PromptTuning(length=1),
    "lora": splice.LoRA(r=4, targets=["v", "o", "down"]),  # DeBERTa also runs q and k on position embeddings
    "pfeiffer": splice.Bottleneck(r=4),
}


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "llama", "gpt2", "opt", "t5"])
def test_routed_rows_equal_rows_run_alone(arch):
    model = splice.attach(tiny_model(arch))
    for seed, (name, config) in enumerate(ROUTED.items()):
        model.add(name, config)
        perturb(model.adapters[name], seed=seed, std=0.5)
    entries = [*ROUTED, "__base__", splice.Stack("prefix", "lora"), splice.Stack("prompt", "pfeiffer")]
    if arch in ("deberta-v2", "t5"):  # relative positions: prefixed rows beside longer prompts are refused
        with pytest.raises(splice.AdapterError, match="relative positions"):
            model(**tiny_inputs(arch, batch=2), adapter_names=["prefix", "prompt"])
        entries = [e for e in entries if "prompt" not in str(e)]
    inputs = tiny_inputs(arch, batch=len(entries), padded=True)
    with torch.no_grad():
        mixed = output(model, {**inputs, "adapter_names": entries})
        for row, setup in enumerate(entries):
            model.disable() if setup == "__base__" else model.activate(setup)
            if arch == "t5":  # encoder and decoder states side by side: run the padded row as it is
                single, cut = {k: v[row : row + 1] for k, v in inputs.items()}, slice(None)
            else:
                single, cut = real_rows(arch, inputs, row)
            alone = output(model, single)
            torch.testing.assert_close(mixed[row : row + 1, cut], alone, atol=1e-5, rtol=1e-5)


def test_routed_generate_equals_rows_alone():
    model = splice.attach(tiny_model("llama", head="lm"))
    for seed, name in enumerate(["prefix", "prompt1", "lora"]):
        model.add(name, ROUTED[name])
        perturb(model.adapters[name], seed=seed, std=1.0)
    entries = ["prefix", "prompt1", "lora", "__base__"]
    inputs = tiny_inputs("llama", batch=4)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    mixed = model.generate(**inputs, adapter_names=entries, **kwargs)
    for row, setup in enumerate(entries):
        model.disable() if setup == "__base__" else model.activate(setup)
        assert torch.equal(mixed[row : row + 1], model.generate(**{k: v[row : row + 1] for k, v in inputs.items()},
                                                                **kwargs))


def test_rows_of_different_prompt_lengths_need_positions_the_model_takes():
    model = splice.attach(tiny_model("roberta"))
    model.add("a", splice.PromptTuning(length=3))
    model.add("b", splice.PromptTuning(length=1))
    with pytest.raises(splice.AdapterError, match="different lengths cannot share a batch"):
        model(**tiny_inputs("roberta"), adapter_names=["a", "b"])


@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
@pytest.mark.parametrize("preset", ["mam", "unipelt"])
def test_union_presets_train_and_reload(arch, preset, tmp_path):
    config = getattr(splice.presets, preset)(prefix_length=2)
    assert splice.methods.config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = splice.attach(tiny_model(arch))
    inputs = tiny_inputs(arch, padded=True)
    with torch.no_grad():
        base = output(model, inputs)
    model.add("u", config)
    before = state_copy(model.base)
    model.train_adapter("u")
    descend(model, lambda: output(model, inputs).pow(2).mean())
    trained = [n for n, p in model.adapters["u"].named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("gates" in n for n in trained) == (preset == "unipelt")
    model.eval()
    assert_same_state(model.base, before)
    with torch.no_grad():
        expected = output(model, inputs)
    assert not torch.allclose(expected, base)
    model.save("u", tmp_path / "u")
    fresh = splice.attach(tiny_model(arch))
    fresh.activate(fresh.load(tmp_path / "u"))
    with torch.no_grad():
        torch.testing.assert_close(output(fresh, inputs), expected, atol=1e-5, rtol=1e-5)
    assert "union" in str(fresh.summary(print_table=False))


def test_union_of_methods_at_one_site_applies_each():
    model = splice.attach(tiny_model("llama"))
    inputs = tiny_inputs("llama")
    model.add("lora", splice.LoRA(r=4, targets=["v"]))
    model.add("ia3", splice.IA3(targets=["v"], scale_inputs=()))
    model.add("u", splice.Union(splice.LoRA(r=4, targets=["v"]), splice.IA3(targets=["v"], scale_inputs=())))
    for name in ("lora", "ia3"):
        perturb(model.adapters[name], seed=1)
        model.adapters["u"].load_state_dict({f"deltas.layers.{i}.v.members.{name}.{k}": v
                                             for i in range(2) for k, v in
                                             model.adapters[name].deltas["layers"][str(i)]["v"].state_dict().items()},
                                            strict=False)
    with torch.no_grad():
        model.activate("lora", "ia3")
        stacked = model(**inputs)[0]
        model.activate("u")
        torch.testing.assert_close(model(**inputs)[0], stacked)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_merge_is_refused_with_a_clear_message(method):
    model = adapted("llama", method)
    with pytest.raises(splice.AdapterError, match="cannot be merged"):
        model.merge("soft")
    model.add("u", splice.presets.mam())
    with pytest.raises(splice.AdapterError, match="cannot be merged"):
        model.merge("u")


def test_prompt_init_from_token_ids():
    model = splice.attach(tiny_model("bert"))
    model.add("p", splice.PromptTuning(length=5, init_ids=[7, 9]))
    table = model.base.get_input_embeddings().weight
    assert torch.equal(model.adapters["p"].deltas["prompt"].embedding, table[[7, 9, 7, 9, 7]])


@pytest.mark.parametrize("build, error, message", [
    (lambda: splice.PromptTuning(length=0), splice.ConfigError, "length must be a positive integer"),
    (lambda: splice.PrefixTuning(length=-1), splice.ConfigError, "length must be a positive integer"),
    (lambda: splice.PromptTuning(init_text="classify:"), splice.ConfigError, "needs tokenizer="),
    (lambda: splice.PromptTuning(init_ids=[1], init_text="a", tokenizer="t"), splice.ConfigError, "not both"),
    (lambda: splice.PrefixTuning(layers=[0]), splice.ConfigError, "every self-attention block"),
    (lambda: splice.PromptTuning(insert="output"), splice.ConfigError, "insert must be one of"),
    (lambda: splice.PrefixTuning(projection_dim=0), splice.ConfigError, "projection_dim"),
    (lambda: splice.Union(splice.LoRA()), splice.ConfigError, "two or more"),
    (lambda: splice.Union(splice.LoRA(), splice.LoRA(r=2)), splice.ConfigError, "different methods"),
])
def test_bad_configs(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_models():
    vit = splice.attach(tiny_model("vit"))
    with pytest.raises(splice.AnatomyError, match="takes no token ids"):
        vit.add("p", splice.PromptTuning())
    bert = splice.attach(tiny_model("bert"))
    with pytest.raises(splice.ConfigError, match="outside this model's vocabulary"):
        bert.add("p", splice.PromptTuning(init_ids=[10_000]))


# -- PromptTuning(insert="embedded"): the prompt after the embedding block (AdapterHub's prompt tuning) ----------

def test_embedded_prompt_config_round_trips():
    config = splice.PromptTuning(length=4, insert="embedded")
    assert splice.methods.config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert splice.PromptTuning().insert == "input"


def test_embedded_prompt_follows_the_embedding_block():
    """Real tokens keep positions 0..T-1: the model equals the encoder run on [prompt; embeddings(ids)]."""
    model = adapted("bert", "embedded")
    inputs = tiny_inputs("bert", padded=True)
    prompt = model.adapters["soft"].deltas["prompt"].embedding
    bert = model.base
    with torch.no_grad():
        out = output(model, inputs)
        hidden = torch.cat([prompt.expand(2, -1, -1), bert.embeddings(input_ids=inputs["input_ids"])], 1)
        mask = torch.cat([torch.ones(2, 3, dtype=torch.long), inputs["attention_mask"]], 1)
        extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        expected = bert.encoder(hidden, attention_mask=extended)[0][:, 3:]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_embedded_prompts_of_different_lengths_route_per_row(arch):
    """Positions are the model's own, so rows of different prompt lengths share a batch (RoBERTa included)."""
    model = splice.attach(tiny_model(arch))
    model.add("a", splice.PromptTuning(length=3, insert="embedded"))
    model.add("b", splice.PromptTuning(length=1, insert="embedded"))
    for seed, name in enumerate("ab"):
        perturb(model.adapters[name], seed=seed, std=0.5)
    entries = ["a", "b", "__base__"]
    inputs = tiny_inputs(arch, batch=3, padded=True)
    with torch.no_grad():
        mixed = output(model, {**inputs, "adapter_names": entries})
        for row, setup in enumerate(entries):
            model.disable() if setup == "__base__" else model.activate(setup)
            single, cut = real_rows(arch, inputs, row)
            torch.testing.assert_close(mixed[row : row + 1, cut], output(model, single), atol=1e-5, rtol=1e-5)


def test_embedded_and_input_prompts_do_not_mix():
    model = splice.attach(tiny_model("bert"))
    model.add("input", splice.PromptTuning(length=2))
    model.add("embedded", splice.PromptTuning(length=2, insert="embedded"))
    with pytest.raises(splice.AdapterError, match="cannot combine"):
        model(**tiny_inputs("bert"), adapter_names=["input", "embedded"])


@pytest.mark.parametrize("arch, head", [("llama", "base"), ("distilbert", "base"), ("t5", "base")])
def test_embedded_prompt_refused_where_the_embedding_block_is_unknown(arch, head):
    model = splice.attach(tiny_model(arch, head=head))
    with pytest.raises(splice.AnatomyError, match="insert='input'"):
        model.add("p", splice.PromptTuning(insert="embedded"))


def test_embedded_prompt_with_sdpa_and_padding_works_or_says_why():
    """transformers 5 sizes the mask from the embeddings (works); 4.x's SDPA path cannot (a clear refusal)."""
    import transformers

    config = tiny_config("bert")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = splice.attach(transformers.BertModel(config).eval())
    model.add("p", splice.PromptTuning(length=3, insert="embedded"))
    model.activate("p")
    inputs = tiny_inputs("bert", batch=2, padded=True)
    if int(transformers.__version__.split(".")[0]) >= 5:
        with torch.no_grad():
            mixed = model(**inputs).last_hidden_state
            alone = model(**{k: v[:1] for k, v in inputs.items()}).last_hidden_state
        torch.testing.assert_close(mixed[:1], alone, atol=1e-5, rtol=1e-5)
    else:
        with pytest.raises(splice.AnatomyError, match="attn_implementation='eager'"):
            model(**inputs)
