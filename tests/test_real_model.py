"""Integration on the real all-MiniLM-L6-v2, SmolLM2-135M-Instruct and real tweets (installed by scripts/setup.sh)."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import splice
from splice.assets import minilm_dir, model_path, tweet_sentiment

from helpers import descend, greedy


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def batch(tokenizer):
    texts = [text for text, _ in tweet_sentiment()[:8]]
    return tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")


def minilm():
    return splice.attach(AutoModel.from_pretrained(minilm_dir()))


def test_anatomy_and_costs_of_the_real_model():
    model = minilm()
    assert model.anatomy.fingerprint() == {
        "model_type": "bert", "hidden_size": 384, "num_layers": 6, "num_heads": 12, "vocab_size": 30522}
    model.add("sentiment", splice.Bottleneck(reduction_factor=16))
    # Pfeiffer: one 384 -> 24 -> 384 bottleneck (with biases) after each of the 6 FFNs.
    assert model.summary(print_table=False).rows[0].parameters == 6 * (384 * 24 + 24 + 24 * 384 + 384)


def test_train_save_load_merge_on_real_text(batch, tmp_path):
    model = minilm()
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    model.add("sentiment", splice.Bottleneck(reduction_factor=16))
    model.add("nli", splice.LoRA(r=8, alpha=16, targets=["q", "v"]))
    model.activate("sentiment", "nli")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, reference)

    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    for name in ("sentiment", "nli"):
        model.train_adapter(name)
        descend(model, lambda: model(**batch).last_hidden_state[:, 0].pow(2).mean())
    model.eval()
    assert all(torch.equal(v, before[k]) for k, v in model.base.state_dict().items())

    model.activate("sentiment", "nli")
    with torch.no_grad():
        adapted = model(**batch).last_hidden_state
    assert not torch.allclose(adapted, reference)
    for name in ("sentiment", "nli"):
        model.save(name, tmp_path / name)
    assert (tmp_path / "sentiment" / "adapter.safetensors").stat().st_size < 1_000_000

    fresh = minilm()
    fresh.activate(fresh.load(tmp_path / "sentiment"), fresh.load(tmp_path / "nli"))
    with torch.no_grad():
        assert torch.equal(fresh(**batch).last_hidden_state, adapted)
        fresh.merge("nli")
        torch.testing.assert_close(fresh(**batch).last_hidden_state, adapted, atol=1e-5, rtol=1e-5)
        fresh.unmerge("nli")
        fresh.disable()
        torch.testing.assert_close(fresh(**batch).last_hidden_state, reference, atol=1e-5, rtol=1e-5)


def test_prompt_initialised_from_text_with_a_local_tokenizer(tokenizer):
    model = minilm()
    text = "classify the sentiment of this tweet"
    model.add("prompt", splice.PromptTuning(length=8, init_text=text, tokenizer=str(minilm_dir())))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = model.base.get_input_embeddings().weight[[ids[i % len(ids)] for i in range(8)]]
    soft = [p for p in model.adapters["prompt"].parameters()]
    assert len(soft) == 1 and torch.equal(soft[0].detach(), expected.detach())
    with pytest.raises(splice.ConfigError, match="could not load tokenizer"):
        model.add("bad", splice.PromptTuning(length=4, init_text=text, tokenizer="/nonexistent/tokenizer"))


def test_prefix_generate_on_real_smollm2_equals_recompute():
    """transformers 5.24 renamed the cache argument; a prefix fed the old name decoded ' Parisi to--' here."""
    torch.manual_seed(0)  # the prefix starts random
    folder = model_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder))
    model.add("prefix", splice.PrefixTuning(length=8))
    model.activate("prefix")
    inputs = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        recomputed = greedy(model, dict(inputs), 4)
    new = tokenizer.decode(recomputed[0, inputs["input_ids"].shape[1]:])
    assert new.startswith(" Paris"), f"a small random prefix should leave the answer alone, got {new!r}"
    assert tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:]) == new
