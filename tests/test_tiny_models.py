"""Smoke tests for the tiny model factory in tests/tiny_models.py."""

import pytest
import torch

from tiny_models import (
    ARCHITECTURES,
    DECODERS,
    SEQ2SEQ,
    tiny_config,
    tiny_inputs,
    tiny_model,
)


def _heads(model_type):
    heads = ["base"]
    if model_type in DECODERS or model_type in SEQ2SEQ:
        heads.append("lm")
    if model_type not in SEQ2SEQ:
        heads.append("classification")
    return heads


CASES = [(t, h) for t in ARCHITECTURES for h in _heads(t)]


def _main_output(out):
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    return out.last_hidden_state


def test_architecture_lists():
    assert ARCHITECTURES[0] == "bert" and ARCHITECTURES[-1] == "vit"
    assert len(ARCHITECTURES) == len(set(ARCHITECTURES)) == 17
    assert set(DECODERS) <= set(ARCHITECTURES)
    assert SEQ2SEQ == ("t5",)
    assert "t5" not in DECODERS


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_config_is_tiny(model_type):
    cfg = tiny_config(model_type)
    assert cfg.model_type == model_type
    assert cfg._attn_implementation == "eager"
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or cfg.dim
    assert hidden == 32
    if hasattr(cfg, "vocab_size"):
        assert cfg.vocab_size <= 128


@pytest.mark.parametrize("model_type,head", CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_builds_and_runs(model_type, head, padded):
    model = tiny_model(model_type, head)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    inputs = tiny_inputs(model_type, padded=padded)
    with torch.no_grad():
        out = _main_output(model(**inputs))
    assert not torch.isnan(out).any()
    if head == "classification":
        assert out.shape == (2, 3)


@pytest.mark.parametrize("model_type,head", CASES)
def test_deterministic_and_dropout_free(model_type, head):
    inputs = tiny_inputs(model_type, padded=True)
    m1, m2 = tiny_model(model_type, head, seed=0), tiny_model(model_type, head, seed=0)
    with torch.no_grad():
        a = _main_output(m1(**inputs))
        b = _main_output(m2(**inputs))
        m1.train()
        c = _main_output(m1(**inputs))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c)


def test_inputs():
    a = tiny_inputs("llama", seed=3)
    b = tiny_inputs("llama", seed=3)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].min() >= 3 and a["input_ids"].max() < 128
    left = tiny_inputs("llama", padded=True)["attention_mask"]
    assert left[-1].tolist() == [0, 0, 0, 1, 1, 1, 1] and left[0].all()
    right = tiny_inputs("bert", padded=True)["attention_mask"]
    assert right[-1].tolist() == [1, 1, 1, 1, 0, 0, 0] and right[0].all()
    t5 = tiny_inputs("t5")
    assert t5["decoder_input_ids"].shape == (2, 5)
    vit = tiny_inputs("vit")
    assert set(vit) == {"pixel_values"} and vit["pixel_values"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("model_type", ["bert", "vit"])
def test_lm_head_rejected_for_encoders(model_type):
    with pytest.raises(ValueError):
        tiny_model(model_type, "lm")


def test_t5_classification_rejected():
    with pytest.raises(ValueError):
        tiny_model("t5", "classification")


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_generate(model_type):
    model = tiny_model(model_type, "lm")
    inputs = tiny_inputs(model_type, padded=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 7 + 3)
    assert torch.equal(out[:, :7], inputs["input_ids"])


def test_t5_generate():
    model = tiny_model("t5", "lm")
    inputs = tiny_inputs("t5")
    inputs.pop("decoder_input_ids")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= 4
