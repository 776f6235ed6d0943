"""peft and AdapterHub formats: the peer-written fixtures reproduce their outputs, splice's peft
output loads in the real peft (a test dependency) with the same outputs, and every refusal is
clear and leaves the model untouched."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

import splice
from splice import IA3, AdapterError, Bottleneck, CheckpointError, LoRA
from splice.convert import detect_format

from helpers import PEERS, hook_count, main_output, peft_folder, perturb, randomise
from tiny_models import tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

TOLERANCE = 1e-4


# -- helpers -----------------------------------------------------------------------------------------


def snapshot(model) -> dict:
    return {
        "adapters": list(model.adapters),
        "base": {k: v.detach().clone() for k, v in model.base.state_dict().items()},
        "hooks": hook_count(model.base),
    }


def assert_untouched(model, before: dict) -> None:
    assert list(model.adapters) == before["adapters"]
    after = model.base.state_dict()
    assert after.keys() == before["base"].keys()
    assert all(torch.equal(after[k], v) for k, v in before["base"].items()), "a failed load changed the base"
    assert hook_count(model.base) == before["hooks"]


def refuses(model, folder: Path, *words: str, error=CheckpointError) -> None:
    """Loading ``folder`` fails with ``error`` naming every one of ``words``, and changes nothing."""
    before = snapshot(model)
    with pytest.raises(error) as caught:
        model.load(folder)
    for word in words:
        assert word in str(caught.value), f"{word!r} not in: {caught.value}"
    assert_untouched(model, before)


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    target = config["config"] if "peft_type" not in config else config
    target.update(changes)
    path.write_text(json.dumps(config))


# -- the peer fixtures ---------------------------------------------------------------------------------

FIXTURES = {"peft_bert_lora": AutoModel, "peft_llama_lora": AutoModelForCausalLM, "adapters_bert_lora": AutoModel}


@pytest.mark.parametrize("case", list(FIXTURES))
def test_peer_fixture_reproduces_output(case):
    folder = PEERS / case
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(FIXTURES[case].from_pretrained(folder / "base", attn_implementation="eager").eval())
    assert (main_output(model, inputs) - expected["base_out"]).abs().max() < TOLERANCE
    name = model.load(folder / "adapter")
    model.activate(name)
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE, "the adapter must change the output"


def test_detect_format(tmp_path):
    assert detect_format(PEERS / "peft_bert_lora" / "adapter") == "peft"
    assert detect_format(PEERS / "adapters_bert_lora" / "adapter") == "adapters"
    model = splice.attach(tiny_model("bert"))
    model.add("x", LoRA(r=2))
    model.save("x", tmp_path / "mine")
    assert detect_format(tmp_path / "mine") == "splice"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an adapter folder"):
        detect_format(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot tell"):
        detect_format(tmp_path / "other")


# -- peft: written by peft, read by splice ---------------------------------------------------------------

PEFT_CASES = {
    "bert-lora-head-patterns": ("bert", "classification", lambda: peft.LoraConfig(
        r=4, target_modules=["query", "value"], modules_to_save=["classifier"], rank_pattern={"value": 2},
        alpha_pattern={"query": 3}, use_rslora=True)),
    "gpt2-fused-lora": ("gpt2", "base", lambda: peft.LoraConfig(r=4, target_modules=["c_attn", "mlp.c_proj"],
                                                                 fan_in_fan_out=True)),
    "neox-lora-one-layer": ("gpt_neox", "lm", lambda: peft.LoraConfig(
        r=4, target_modules=["query_key_value", "dense_4h_to_h"], layers_to_transform=[1])),
    "llama-ia3": ("llama", "lm", lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                        feedforward_modules=["down_proj"])),
    "gpt2-fused-ia3": ("gpt2", "lm", lambda: peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"],
                                                            feedforward_modules=["mlp.c_proj"])),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_written_adapter_gives_peft_outputs(tmp_path, case):
    model_type, head, make_config = PEFT_CASES[case]
    folder, want = peft_folder(tmp_path, model_type, head, make_config())
    model = splice.attach(tiny_model(model_type, head))
    base = main_output(model, tiny_inputs(model_type, padded=True))
    name = model.load(folder)
    model.activate(name)
    out = main_output(model, tiny_inputs(model_type, padded=True))
    assert (out - want).abs().max() < TOLERANCE
    assert (out - base).abs().max() > 10 * TOLERANCE


def test_peft_options_become_splice_options(tmp_path):
    _, head, make_config = PEFT_CASES["bert-lora-head-patterns"]
    folder, _ = peft_folder(tmp_path, "bert", head, make_config())
    model = splice.attach(tiny_model("bert", head))
    adapter = model.adapters[model.load(folder, name="cls")]
    assert adapter.config == LoRA(r=4, alpha=8, targets=("q", "v"), use_rslora=True,
                                  rank_pattern={"v": 2}, alpha_pattern={"q": 3})
    assert adapter.head_path == "classifier"

    folder, _ = peft_folder(tmp_path / "n", *PEFT_CASES["neox-lora-one-layer"][:2],
                            PEFT_CASES["neox-lora-one-layer"][2]())
    model = splice.attach(tiny_model("gpt_neox", "lm"))
    assert model.adapters[model.load(folder)].config.layers == (1,)


# -- peft: written by splice, read by peft ----------------------------------------------------------------

SPLICE_CASES = {
    "bert-lora": ("bert", "base", LoRA(r=4, alpha=8, targets=["q", "v", "down"]), None),
    "bert-lora-patterns-head": ("bert", "classification", LoRA(
        r=4, targets=["q", "v"], rank_pattern={"v": 2, "layers.1.q": 3}, alpha_pattern={"q": 5}), "classifier"),
    "llama-lora-rslora": ("llama", "lm", LoRA(r=4, alpha=16, targets="all-linear", use_rslora=True), None),
    "gpt2-lora-fused": ("gpt2", "lm", LoRA(r=4, targets=["q", "v", "o", "up"]), None),
    "neox-lora-one-layer": ("gpt_neox", "lm", LoRA(r=4, targets=["k", "v"], layers=(1,)), None),
    "bert-ia3": ("bert", "base", IA3(), None),
    "llama-ia3": ("llama", "lm", IA3(targets=("k", "v", "down", "up")), None),
    "gpt2-ia3-fused": ("gpt2", "lm", IA3(targets=("k", "v", "down")), None),
}


@pytest.mark.parametrize("case", list(SPLICE_CASES))
def test_splice_written_peft_loads_in_peft(tmp_path, case):
    model_type, head, config, head_path = SPLICE_CASES[case]
    base = tiny_model(model_type, head)
    inputs = tiny_inputs(model_type, padded=True)
    model = splice.attach(copy.deepcopy(base))
    model.add("x", config, head=head_path)
    perturb(model.adapters["x"], seed=1, std=0.2)
    model.activate("x")
    want = main_output(model, inputs)
    model.save("x", tmp_path / "out", format="peft")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]

    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "out").eval()
    assert (main_output(peft_model, inputs) - want).abs().max() < TOLERANCE

    again = splice.attach(tiny_model(model_type, head))  # and back: splice reads what it wrote
    again.activate(again.load(tmp_path / "out"))
    assert (main_output(again, inputs) - want).abs().max() < TOLERANCE


def test_peft_write_keeps_short_target_names(tmp_path):
    model = splice.attach(tiny_model("llama", "lm"))
    model.add("x", LoRA(r=4, targets=["q", "v"]))
    model.save("x", tmp_path / "out", format="peft")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"] == ["q_proj", "v_proj"]
    assert config["r"] == 4 and config["rank_pattern"] == {} and config["modules_to_save"] is None


def test_peft_write_refusals(tmp_path):
    model = splice.attach(tiny_model("bert"))
    model.add("bn", Bottleneck())
    with pytest.raises(AdapterError, match="bottleneck"):
        model.save("bn", tmp_path / "bn", format="peft")
    model.add("x", LoRA())
    with pytest.raises(splice.SpliceError, match="bottleneck adapters only"):  # AdapterHub's format: bottlenecks
        model.save("x", tmp_path / "x", format="adapters")
    assert not (tmp_path / "bn").exists() and not (tmp_path / "x").exists()


# -- refusals ------------------------------------------------------------------------------------------------


@pytest.fixture
def bert_lora(tmp_path) -> Path:
    folder, _ = peft_folder(tmp_path, "bert", "base", peft.LoraConfig(r=4, target_modules=["query", "value"]))
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"peft_type": "FOURIERFT"}, ["peft_type 'FOURIERFT'", "LORA"]),
    ({"use_dora": True}, ["use_dora", "DoRA"]),
    ({"bias": "all"}, ["bias='all'"]),
    ({"init_lora_weights": "pissa"}, ["init_lora_weights='pissa'", "base model's weights"]),
    ({"lora_bias": True}, ["lora_bias"]),
    ({"brand_new_option": {"k": 1}}, ["brand_new_option"]),
])
def test_peft_option_refusals(bert_lora, changes, words):
    edit_config(bert_lora, **changes)
    refuses(splice.attach(tiny_model("bert")), bert_lora, *words)


def test_peft_target_that_is_not_a_role_site(tmp_path):
    folder, _ = peft_folder(tmp_path, "bert", "base", peft.LoraConfig(r=4, target_modules=["query", "pooler.dense"]))
    refuses(splice.attach(tiny_model("bert")), folder, "pooler.dense", "not a role site")


def test_peft_pattern_one_adapter_cannot_hold(tmp_path):
    config = peft.LoraConfig(
        r=4, target_modules=r".*layer\.0\.attention\.self\.query|.*layer\.1\.attention\.self\.value")
    folder, _ = peft_folder(tmp_path, "bert", "base", config)
    refuses(splice.attach(tiny_model("bert")), folder, "layers.0.v", "same roles in every chosen layer")


def test_peft_head_the_model_lacks(tmp_path):
    _, head, make_config = PEFT_CASES["bert-lora-head-patterns"]
    folder, _ = peft_folder(tmp_path, "bert", head, make_config())
    refuses(splice.attach(tiny_model("bert")), folder, "'classifier'", "does not have")


def test_peft_adapter_for_another_base(bert_lora):
    refuses(splice.attach(tiny_model("llama")), bert_lora, "not a role site")
    config = tiny_model("bert").config
    config.hidden_size, config.intermediate_size = 48, 96
    wider = splice.attach(AutoModel.from_config(config))
    refuses(wider, bert_lora, "output rows", "written for another model")


class Payload:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bin_needing_unpickling_is_refused(bert_lora, tmp_path):
    marker = tmp_path / "pwned"
    tensors = load_file(str(bert_lora / "adapter_model.safetensors"))
    (bert_lora / "adapter_model.safetensors").unlink()
    torch.save({**tensors, "extra": Payload(marker)}, bert_lora / "adapter_model.bin")
    refuses(splice.attach(tiny_model("bert")), bert_lora, "adapter_model.bin", "arbitrary code", "safetensors")
    assert not marker.exists()


def test_bin_with_plain_tensors_loads(bert_lora):
    tensors = load_file(str(bert_lora / "adapter_model.safetensors"))
    (bert_lora / "adapter_model.safetensors").unlink()
    torch.save(tensors, bert_lora / "adapter_model.bin")
    model = splice.attach(tiny_model("bert"))
    assert model.load(bert_lora, name="from_bin") == "from_bin"


def test_corrupted_weights_are_refused(bert_lora):
    path = bert_lora / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    refuses(splice.attach(tiny_model("bert")), bert_lora, "adapter_model.safetensors")


@pytest.fixture
def adapters_lora(tmp_path) -> Path:
    folder = tmp_path / "adapters"
    shutil.copytree(PEERS / "adapters_bert_lora" / "adapter", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"use_gating": True}, ["use_gating", "gate"]),
    ({"use_dora": True}, ["DoRA", "m.weight"]),  # DoRA and VeRA are read (test_adapterhub_lora_variants.py):
    ({"vera_d": 0.1}, ["VeRA", "shared projections"]),  # a plain LoRA's tensors are not theirs
    ({"composition_mode": "mix"}, ["composition_mode 'mix'"]),
    ({"n_up_projection": 3}, ["n_up_projection"]),
    ({"architecture": "mystery"}, ["architecture 'mystery'"]),
])
def test_adapters_option_refusals(adapters_lora, changes, words):
    edit_config(adapters_lora, **changes)
    refuses(splice.attach(tiny_model("bert")), adapters_lora, *words)


def test_adapters_of_another_base_are_refused(adapters_lora):
    refuses(splice.attach(tiny_model("llama")), adapters_lora, "model_type", "'bert'", "'llama'")


def test_adapters_static_head_becomes_splice_head(adapters_lora):
    model = splice.attach(tiny_model("bert", "classification"))
    head = {"weight": torch.randn(3, 32), "bias": torch.randn(3)}
    save_file({f"classifier.{k}": v for k, v in head.items()}, str(adapters_lora / "model_head.safetensors"))
    (adapters_lora / "head_config.json").write_text(json.dumps({"config": None, "model_class": "x"}))
    adapter = model.adapters[model.load(adapters_lora)]
    assert adapter.head_path == "classifier" and torch.equal(adapter.head.weight, head["weight"])

    (adapters_lora / "head_config.json").write_text(json.dumps({"config": {"head_type": "classification"}}))
    refuses(splice.attach(tiny_model("bert", "classification")), adapters_lora, "flex head", "'classification'")


# -- prompt and prefix tuning in peft's format ("prompt learning") -------------------------------------------
#
# peft returns outputs for its virtual tokens too (``[B, P + T, ...]``); splice strips them (``[B, T, ...]``),
# so splice's output is compared with peft's ``[:, P:]``. peft passes no position ids, so the model numbers
# virtual, pad and real slots in order; splice numbers attended slots only. Rows without left padding get the
# same positions; for the rest see test_peft_prompt_positions_of_padded_rows.


def soft_close(out: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, count: int, rows=None) -> float:
    """Max |out - want| over the real (attended) tokens of ``rows`` (default: all); ``want`` may hold peft's
    ``count`` virtual positions in front."""
    if want.dim() == 3 and want.shape[1] == out.shape[1] + count:
        want = want[:, count:]
    diff = (out - want).abs()
    if diff.dim() == 3:
        diff = diff.amax(-1).masked_fill(mask == 0, 0)
    rows = list(range(out.shape[0])) if rows is None else rows
    return diff[rows].max().item()


def right_padded(model_type: str) -> dict[str, torch.Tensor]:
    """tiny_inputs with the padded row padded on the right (decoders pad on the left there)."""
    inputs = tiny_inputs(model_type, padded=True)
    if model_type in ("bert",):
        return inputs
    return {key: value.flip(-1) for key, value in inputs.items()}


def test_peft_prompt_fixture_reproduces_output():
    folder = PEERS / "peft_llama_prompt"
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    mask = inputs["attention_mask"]
    assert mask[-1].tolist() == [1] * 6 + [0] * 3, "the fixture's padded row is padded on the right"
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder / "base", attn_implementation="eager").eval())
    name = model.load(folder / "adapter")
    assert model.adapters[name].config == splice.PromptTuning(length=5)
    model.activate(name)
    out = main_output(model, inputs)
    assert expected["out"].shape[1] == out.shape[1] + 5  # peft keeps its 5 virtual positions; splice strips them
    assert soft_close(out, expected["out"], mask, 5) < TOLERANCE  # every row's real tokens, the padded one's too
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE
    # Only the outputs *at* the 3 pad slots differ: peft numbers them 11..13, splice gives masked slots
    # position 1. Given peft's positions (0.. over the caller's slots), splice matches there too.
    assert (out[-1, 6:] - expected["out"][-1, 11:]).abs().max() > 5 * TOLERANCE  # 8.3e-4
    given = main_output(model, {**inputs, "position_ids": torch.arange(9).expand(3, -1)})
    assert (given - expected["out"][:, 5:]).abs().max() < TOLERANCE


PEFT_SOFT_CASES = {
    "llama-prompt": ("llama", "lm", lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)),
    "llama-prefix": ("llama", "lm", lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
    "llama-prefix-projection": ("llama", "lm", lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=12)),
    "gpt2-prefix": ("gpt2", "lm", lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)),
    "bert-prompt": ("bert", "base", lambda: peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                     num_virtual_tokens=3)),
    "bert-prompt-classifier": ("bert", "classification", lambda: peft.PromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=3)),
}


@pytest.mark.parametrize("case", list(PEFT_SOFT_CASES))
def test_peft_written_prompt_and_prefix_give_peft_outputs(tmp_path, case):
    model_type, head, make_config = PEFT_SOFT_CASES[case]
    config = make_config()
    peft_model = peft.get_peft_model(tiny_model(model_type, head), config)
    randomise(peft_model)  # the prompt / prefix (or its MLP), and a SEQ_CLS model's classifier
    peft_model.save_pretrained(tmp_path / "peft")
    inputs = right_padded(model_type)
    want = main_output(peft_model.eval(), inputs)
    model = splice.attach(tiny_model(model_type, head))
    base = main_output(model, inputs)
    name = model.load(tmp_path / "peft")
    adapter = model.adapters[name]
    assert adapter.config.length == config.num_virtual_tokens
    assert adapter.head_path == ("classifier" if head == "classification" else None)
    model.activate(name)
    out = main_output(model, inputs)
    assert soft_close(out, want, inputs["attention_mask"], config.num_virtual_tokens) < TOLERANCE
    assert (out - base).abs().max() > 10 * TOLERANCE


def test_peft_prompt_positions_of_padded_rows(tmp_path):
    """peft counts left pads as positions (virtual 0..P-1, pads, then real tokens); splice skips them. Rows
    without left padding agree; a left-padded row agrees once splice is given peft's positions."""
    peft_model = peft.get_peft_model(tiny_model("gpt2", "lm"),
                                     peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    randomise(peft_model)
    peft_model.save_pretrained(tmp_path / "peft")
    inputs = tiny_inputs("gpt2", padded=True)  # the last row is padded on the left
    want = main_output(peft_model.eval(), inputs)
    model = splice.attach(tiny_model("gpt2", "lm"))
    model.activate(model.load(tmp_path / "peft"))
    out = main_output(model, inputs)
    mask = inputs["attention_mask"]
    assert soft_close(out, want, mask, 4, rows=[0]) < TOLERANCE
    assert soft_close(out, want, mask, 4, rows=[1]) > 0.01  # learned positions: 0.36 on the tiny GPT-2
    peft_positions = torch.arange(mask.shape[1]).expand_as(mask)
    assert soft_close(main_output(model, {**inputs, "position_ids": peft_positions}), want, mask, 4) < TOLERANCE


SPLICE_SOFT_CASES = {
    "llama-prompt": ("llama", "lm", splice.PromptTuning(length=4), None),
    "llama-prefix-mlp": ("llama", "lm", splice.PrefixTuning(length=3, projection_dim=6), None),
    "gpt2-prefix": ("gpt2", "lm", splice.PrefixTuning(length=2), None),
    "bert-prompt": ("bert", "base", splice.PromptTuning(length=3), None),
    "bert-prompt-classifier": ("bert", "classification", splice.PromptTuning(length=3), "classifier"),
}


@pytest.mark.parametrize("case", list(SPLICE_SOFT_CASES))
def test_splice_written_prompt_and_prefix_load_in_peft(tmp_path, case):
    model_type, head, config, head_path = SPLICE_SOFT_CASES[case]
    base = tiny_model(model_type, head)
    inputs = right_padded(model_type)
    model = splice.attach(copy.deepcopy(base))
    model.add("x", config, head=head_path)
    perturb(model.adapters["x"], seed=1, std=0.3)
    model.activate("x")
    want = main_output(model, inputs)
    model.save("x", tmp_path / "out", format="peft")
    written = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert written["num_virtual_tokens"] == config.length and written["num_transformer_submodules"] == 1
    assert written["task_type"] == {"lm": "CAUSAL_LM", "base": "FEATURE_EXTRACTION",
                                    "classification": "SEQ_CLS"}[head]

    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "out").eval()
    assert soft_close(want, main_output(peft_model, inputs), inputs["attention_mask"], config.length) < TOLERANCE

    again = splice.attach(tiny_model(model_type, head))  # and back
    again.activate(again.load(tmp_path / "out"))
    assert (main_output(again, inputs) - want).abs().max() < TOLERANCE


@pytest.fixture
def llama_prompt(tmp_path) -> Path:
    peft_model = peft.get_peft_model(tiny_model("llama", "lm"),
                                     peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    peft_model.save_pretrained(tmp_path / "prompt")
    return tmp_path / "prompt"


@pytest.mark.parametrize("changes, words", [
    ({"num_transformer_submodules": 2}, ["num_transformer_submodules=2", "encoder"]),
    ({"task_type": "SEQ_2_SEQ_LM", "num_transformer_submodules": None}, ["num_transformer_submodules=2"]),
    ({"token_dim": 48}, ["token_dim=48", "32 wide"]),
    ({"num_virtual_tokens": 4}, ["prompt_embeddings", "[3, 32]", "[4, 32]"]),
    ({"num_virtual_tokens": 0}, ["num_virtual_tokens"]),
    ({"brand_new_option": 3}, ["brand_new_option=3", "PROMPT_TUNING"]),
    ({"prefix_projection": True}, ["prefix_projection"]),  # a prefix option on a prompt
])
def test_peft_prompt_refusals(llama_prompt, changes, words):
    edit_config(llama_prompt, **changes)
    refuses(splice.attach(tiny_model("llama", "lm")), llama_prompt, *words)


def test_peft_prompt_for_another_model_is_refused(llama_prompt):
    refuses(splice.attach(tiny_model("t5", "lm")), llama_prompt, "encoder-decoder")
    refuses(splice.attach(tiny_model("vit")), llama_prompt, "token ids")


def test_peft_prefix_refusals(tmp_path):
    peft_model = peft.get_peft_model(tiny_model("llama", "lm"),
                                     peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    peft_model.save_pretrained(tmp_path / "prefix")
    folder = tmp_path / "prefix"
    model = splice.attach(tiny_model("llama", "lm"))
    for changes, words in [({"num_attention_heads": 4}, ["num_attention_heads=4", "2 key/value heads"]),
                           ({"num_layers": 3}, ["num_layers=3", "2 self-attention blocks"]),
                           ({"token_dim": 32}, ["token_dim=32", "16 wide"])]:
        shutil.copytree(folder, tmp_path / "edited", dirs_exist_ok=True)
        edit_config(tmp_path / "edited", **changes)
        refuses(model, tmp_path / "edited", *words)
    refuses(splice.attach(tiny_model("gpt2", "lm")), folder, "token_dim=16", "32 wide")

    bert = peft.get_peft_model(tiny_model("bert"), peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                          num_virtual_tokens=3))
    bert.save_pretrained(tmp_path / "bert")
    refuses(splice.attach(tiny_model("bert")), tmp_path / "bert", "PREFIX_TUNING", "'bert'", "positions")


def test_peft_write_refusals_for_prompt_and_prefix(tmp_path):
    bert = splice.attach(tiny_model("bert"))
    bert.add("x", splice.PrefixTuning(length=2))
    with pytest.raises(AdapterError, match="positions"):
        bert.save("x", tmp_path / "bert", format="peft")
    t5 = splice.attach(tiny_model("t5", "lm"))
    t5.add("p", splice.PromptTuning(length=2))
    with pytest.raises(AdapterError, match="encoder-decoder"):
        t5.save("p", tmp_path / "t5", format="peft")
    assert not (tmp_path / "bert").exists() and not (tmp_path / "t5").exists()


# -- AdapterHub prefix tuning ----------------------------------------------------------------------------------
# tests/data/adapters_prefix holds folders written by the real adapters 1.3.0 (tests/data/make_adapterhub.py):
# the prefix goes in front of each self-attention's keys and values with positions untouched, as splice's
# encoder prefix.

ADAPTERS_PREFIX = Path(__file__).resolve().parent / "data" / "adapters_prefix"


@pytest.mark.parametrize("case, model_type, length", [("bert_mlp", "bert", 3), ("distilbert_flat", "distilbert", 2)])
def test_adapters_prefix_reproduces_output(tmp_path, case, model_type, length):
    expected = load_file(str(ADAPTERS_PREFIX / case / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(tiny_model(model_type))
    base = main_output(model, inputs)
    assert (base - expected["base_out"]).abs().max() < TOLERANCE  # the base adapters ran
    name = model.load(ADAPTERS_PREFIX / case / "adapter")
    assert model.adapters[name].config == splice.PrefixTuning(length=length)  # bert_mlp: its MLP folded
    model.activate(name)
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every position of every row, the padded one's too
    assert (out - base).abs().max() > 10 * TOLERANCE
    model.save(name, tmp_path / "mine")  # and as a splice adapter
    again = splice.attach(tiny_model(model_type))
    again.activate(again.load(tmp_path / "mine"))
    assert (main_output(again, inputs) - out).abs().max() < TOLERANCE


@pytest.fixture
def adapters_prefix(tmp_path) -> Path:
    folder = tmp_path / "prefix"
    shutil.copytree(ADAPTERS_PREFIX / "bert_mlp" / "adapter", folder)
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"architecture": "prompt_tuning"}, ["prompt_tuning option", "bottleneck_size=7"]),  # prefix options on a prompt
    ({"leave_out": [0]}, ["leave_out=[0]"]),
    ({"use_gating": True}, ["use_gating=True"]),
    ({"new_knob": 2}, ["new_knob=2"]),
    ({"flat": True}, ["flat=True", "control_trans"]),
    ({"prefix_length": 4}, ["prefix_length 4", "wte"]),
    ({"non_linearity": "nonesuch"}, ["non_linearity 'nonesuch'"]),
])
def test_adapters_prefix_option_refusals(adapters_prefix, changes, words):
    edit_config(adapters_prefix, **changes)
    refuses(splice.attach(tiny_model("bert")), adapters_prefix, *words)


@pytest.mark.parametrize("model_type, head, words", [
    ("llama", "lm", ["'llama'", "positions 0..", "0.043"]),  # decoders: real tokens from 0 in adapters, P in splice
    ("deberta-v2", "base", ["'deberta-v2'", "relative"]),
    ("t5", "base", ["encoder-decoder"]),
])
def test_adapters_prefix_models_refused(adapters_prefix, model_type, head, words):
    refuses(splice.attach(tiny_model(model_type, head)), adapters_prefix, *words)


# -- AdapterHub prompt tuning ----------------------------------------------------------------------------------
# tests/data/adapters_prompt/bert was written by the real adapters 1.3.0 (tests/data/make_adapterhub.py): the
# prompt goes in front of the embedding block's output, as splice's PromptTuning(insert="embedded").

ADAPTERS_PROMPT = Path(__file__).resolve().parent / "data" / "adapters_prompt"


def test_adapters_prompt_reproduces_output(tmp_path):
    expected = load_file(str(ADAPTERS_PROMPT / "bert" / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(tiny_model("bert"))
    base = main_output(model, inputs)
    assert (base - expected["base_out"]).abs().max() < TOLERANCE
    name = model.load(ADAPTERS_PROMPT / "bert" / "adapter")
    assert model.adapters[name].config == splice.PromptTuning(length=3, insert="embedded")
    model.activate(name)
    out = main_output(model, inputs)
    real = inputs["attention_mask"].bool()  # adapters returns the 3 prompt positions first; splice drops them
    assert (out - expected["out"][:, 3:])[real].abs().max() < TOLERANCE  # the padded row's real positions too
    assert (out - base).abs().max() > 10 * TOLERANCE
    model.save(name, tmp_path / "mine")
    again = splice.attach(tiny_model("bert"))
    again.activate(again.load(tmp_path / "mine"))
    assert (main_output(again, inputs) - out).abs().max() < TOLERANCE


@pytest.fixture
def adapters_prompt(tmp_path) -> Path:
    folder = tmp_path / "prompt"
    shutil.copytree(ADAPTERS_PROMPT / "bert" / "adapter", folder)
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"combine": "prefix_after_bos"}, ["combine='prefix_after_bos'"]),
    ({"prompt_length": 4}, ["prompt_length is 4", "[3, 32]"]),
    ({"new_knob": 2}, ["new_knob=2"]),
])
def test_adapters_prompt_option_refusals(adapters_prompt, changes, words):
    edit_config(adapters_prompt, **changes)
    refuses(splice.attach(tiny_model("bert")), adapters_prompt, *words)


@pytest.mark.parametrize("model_type, head", [("distilbert", "base"), ("llama", "lm"), ("t5", "base")])
def test_adapters_prompt_models_refused(adapters_prompt, model_type, head):
    refuses(splice.attach(tiny_model(model_type, head)), adapters_prompt, "insert='embedded'", f"{model_type!r}")
