"""splice models under TRL's SFTTrainer and DPOTrainer: every decoder method trains, the base stays bit-identical,
and DPO's reference is the base through the same weights (no second copy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, SFTConfig

import splice
from splice.errors import SpliceError
from splice.integrations.trl import DPOTrainer, ReferenceModel, SFTTrainer
from splice.methods import recipes

from helpers import TINY_OPTIONS
from tiny_models import tiny_model
from train_fixtures import save_tiny

REPO = Path(__file__).resolve().parents[1]
TEXTS = datasets.Dataset.from_dict({"text": ["the cat sat on the mat"] * 12})
PAIRS = datasets.Dataset.from_dict({"prompt": ["the cat"] * 12, "chosen": [" sat on the mat"] * 12,
                                    "rejected": [" dog ran away"] * 12})


def _decoder_methods() -> list[str]:
    """The registry's recipes that train something of their own on a decoder (not the base, not a head alone)."""
    names = []
    for name, plan in recipes().items():
        model = splice.attach(tiny_model("llama", "lm"))
        model.add("a", plan.config(TINY_OPTIONS.get(name, {})))
        if not plan.trains_base and model.adapters["a"].num_parameters():
            names.append(name)
    return names


METHODS = _decoder_methods()


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    folder = save_tiny("llama", tmp_path_factory.mktemp("trl") / "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.eos_token = tokenizer.sep_token  # the tiny Llama ends with [SEP]; TRL appends the eos token
    tokenizer.save_pretrained(folder)
    return folder


def adapted(folder: Path, method: str):
    base = AutoModelForCausalLM.from_pretrained(folder)
    model = splice.attach(base)
    model.add("a", recipes()[method].config(TINY_OPTIONS.get(method, {})))
    model.train_adapter("a")
    return model, {name: tensor.clone() for name, tensor in base.state_dict().items()}


def options(out: Path) -> dict:
    return dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, max_length=32,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def assert_base_untouched(model, before: dict) -> None:
    after = model.base.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def test_the_decoder_methods_are_the_registry_less_the_base_and_head_only_ones():
    assert {"lora", "ia3", "bitfit", "prefix", "prompt", "pfeiffer", "mam", "unipelt"} <= set(METHODS)
    assert "full" not in METHODS and "probe" not in METHODS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_sft_and_dpo_and_leaves_the_base_alone(llama, tmp_path, method):
    model, before = adapted(llama, method)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    sft = SFTTrainer(model, args=SFTConfig(**options(tmp_path / "sft")), train_dataset=TEXTS,
                     processing_class=tokenizer)
    sft.train()
    assert losses(sft)[-1] < losses(sft)[0]
    assert_base_untouched(model, before)

    model, before = adapted(llama, method)
    dpo = DPOTrainer(model, args=DPOConfig(**options(tmp_path / "dpo")), train_dataset=PAIRS,
                     processing_class=tokenizer)
    dpo.train()
    assert losses(dpo)[-1] < losses(dpo)[0]
    assert_base_untouched(model, before)
    assert isinstance(dpo.ref_model, ReferenceModel) and not list(dpo.ref_model.parameters())  # no copy


def test_the_reference_is_the_base_bit_for_bit_and_the_policy_keeps_its_routing(llama):
    model, _ = adapted(llama, "prompt")  # soft tokens: the adapted output differs from the base's from the start
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        adapted_logits = model(input_ids=ids).logits
        reference_logits = ReferenceModel(model)(input_ids=ids).logits
        model.disable()
        base_logits = model(input_ids=ids).logits
        model.activate("a")
        assert torch.equal(reference_logits, base_logits) and not torch.equal(adapted_logits[:, -4:], base_logits)
        model(input_ids=ids)
        plan = model.hooks.plan
        ReferenceModel(model)(input_ids=ids)
        assert model.hooks.plan is plan  # what gradient checkpointing's recomputation reads


def test_saving_writes_only_the_adapter(llama, tmp_path):
    model, _ = adapted(llama, "lora")
    trainer = SFTTrainer(model, args=SFTConfig(**options(tmp_path / "run")), train_dataset=TEXTS,
                         processing_class=AutoTokenizer.from_pretrained(llama))
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter" / "adapter.safetensors").is_file()
    assert not list((tmp_path / "saved").glob("model*.safetensors"))


def test_bad_models_are_one_line_errors(llama, tmp_path):
    with pytest.raises(SpliceError, match="trains a splice.AdaptedModel.*use trl.SFTTrainer itself"):
        SFTTrainer(AutoModelForCausalLM.from_pretrained(llama), args=SFTConfig(**options(tmp_path)),
                   train_dataset=TEXTS)
    model = splice.attach(AutoModelForCausalLM.from_pretrained(llama))
    with pytest.raises(SpliceError, match="no active adapters.*train_adapter"):
        DPOTrainer(model, args=DPOConfig(**options(tmp_path)), train_dataset=PAIRS)


@pytest.mark.parametrize("script", ["trl_sft", "trl_dpo"])
def test_examples_train_on_a_tiny_llama_and_write_the_adapter(llama, tmp_path, script):
    spec = importlib.util.spec_from_file_location(script, REPO / "examples" / f"{script}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, logged = example.main(["--model", str(llama), "--steps", "3", "--out", str(tmp_path), "--max-length", "64",
                                  "--prompt-chars", "60", "--rows", "2", "--learning-rate", "0.01"])
    assert len(logged) == 3 and logged[-1] < logged[0]
    assert_base_untouched(model, AutoModelForCausalLM.from_pretrained(llama).state_dict())
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()


def test_the_reference_pass_builds_no_banks_and_saves_nothing_for_backward(llama):
    """DPO's reference forward (under no_grad, as TRL runs it) must cost what the base alone costs: routing every
    row to the base used to build the serving path's resident banks (copies of every adapter's weights per site,
    1.9 MB on SmolLM2 with LoRA r8 on q, v), kept for the whole run."""
    model, _ = adapted(llama, "lora")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ReferenceModel(model)(input_ids=ids)
    assert not saved and not model.planner.banks.tensors() and model.planner.resident_plan is None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(input_ids=ids).logits.sum().backward()  # the policy's pass does save tensors: the check above can fail
    assert saved
