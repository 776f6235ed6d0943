"""The demo assets: BBC News, WNUT-16, and SmolLM2 converted once from GGUF into a cached Hugging Face folder."""

import collections

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import splice
from splice import assets
from splice.errors import SpliceError


def test_bbc_news_articles_and_topics():
    rows = assets.bbc_news()
    assert len(rows) == 2225
    assert collections.Counter(topic for _, topic in rows) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert rows[0][0].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    assert all("\ufffd" not in text for text, _ in rows)  # the one Windows-1252 file decodes cleanly


def test_wnut16_sentences():
    sentences = assets.wnut16()
    assert len(sentences) == 2394 and sum(len(tokens) for tokens, _ in sentences) == 46469
    assert sentences[0][0][:3] == ["@paulwalk", "It", "'s"] and sentences[0][1][14:17] == [
        "B-facility", "I-facility", "I-facility"]
    tags = {tag for _, tags in sentences for tag in tags}
    assert len(tags) == 21 and {tag[2:] for tag in tags - {"O"}} >= {"person", "geo-loc", "company"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLICE_CACHE", str(tmp_path))
    return tmp_path


def fake_model(out):
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"mine")


def test_smollm2_conversion_that_loses_a_race_keeps_the_winners_folder(cache, monkeypatch):
    def convert_while_another_process_finishes_first(folder, gguf_file, out):
        fake_model(out)
        winner = cache / "smollm2-135m-instruct"
        winner.mkdir()
        (winner / "model.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(assets, "_save_dequantised", convert_while_another_process_finishes_first)
    folder = assets.smollm2_dir()
    assert (folder / "model.safetensors").read_bytes() == b"theirs"
    assert [p.name for p in cache.iterdir()] == ["smollm2-135m-instruct"]  # the loser's staging folder is gone


def test_interrupted_smollm2_conversion_leaves_nothing(cache, monkeypatch):
    def interrupted(folder, gguf_file, out):
        fake_model(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_save_dequantised", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.smollm2_dir()
    assert list(cache.iterdir()) == []


def test_smollm2_refuses_to_replace_a_foreign_folder(cache, monkeypatch):
    (cache / "smollm2-135m-instruct").mkdir()
    (cache / "smollm2-135m-instruct" / "notes.txt").write_text("mine")
    monkeypatch.setattr(assets, "_save_dequantised", lambda folder, gguf_file, out: fake_model(out))
    with pytest.raises(SpliceError, match="is not a converted model. Remove it"):
        assets.smollm2_dir()
    assert [p.name for p in (cache / "smollm2-135m-instruct").iterdir()] == ["notes.txt"]


def test_real_smollm2_converts_once_and_answers_paris(cache, monkeypatch):
    folder = assets.model_path("smollm2")  # the real conversion, about 20-40 s on 2 cores
    assert folder == cache / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}

    def convert_again(*args):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(assets, "_save_dequantised", convert_again)
    assert assets.smollm2_dir() == folder

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1]:]).startswith(" Paris")
    assert splice.attach(model).anatomy.fingerprint() == {
        "model_type": "llama", "hidden_size": 576, "num_layers": 30, "num_heads": 9, "vocab_size": 49152}


def test_model_path_takes_built_in_names_and_refuses_folders_without_a_model(tmp_path):
    from splice.cli.common import load_base

    assert (assets.model_path("minilm") / "config.json").is_file()
    assert load_base("minilm", "base").config.model_type == "bert"  # every --model option takes the name
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpliceError, match="no config.json"):
        assets.model_path(tmp_path / "empty")
    with pytest.raises(SpliceError, match="neither a local folder nor a built-in"):
        assets.model_path(tmp_path / "missing")
