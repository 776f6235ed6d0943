"""``--quantize`` on the command line: train a LoRA on an NF4 base, evaluate and predict on it, merge it into a
float model, and one-line refusals for what cannot work."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import splice
from splice.cli import main

from helpers import main_output
from train_fixtures import save_tiny, text_jsonl

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized-cli")
    return {"llama": save_tiny("llama", root / "llama"), "jsonl": text_jsonl(root / "lm.jsonl")}


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    """A LoRA trained on the tiny Llama stored as NF4."""
    out = tmp_path_factory.mktemp("runs") / "qlora"
    code = main([str(a) for a in ("train", "--model", files["llama"], "--data", files["jsonl"], "--task", "causal-lm",
                                  "--method", "lora", "--quantize", "nf4", "--out", out, "--epochs", "2",
                                  "--batch-size", "8", "--learning-rate", "0.01", "-q")])
    assert code == 0
    return out


def test_train_on_nf4_records_the_quantization_and_learns(trained, files):
    meta = json.loads((trained / "adapter" / "adapter.json").read_text())
    assert meta["base_quantization"] == {"layers": {"nf4": 14}, "compute_dtype": "float32"}
    assert meta["training"]["quantize"] == "nf4"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["perplexity"] < metrics["test"]["perplexity_before"]
    float_base = splice.attach(AutoModelForCausalLM.from_pretrained(files["llama"]).eval())
    assert meta["base"] == float_base.anatomy.fingerprint()


def test_eval_and_predict_on_the_quantized_base(trained, capsys):
    code, out, _ = run(capsys, "eval", trained, "--quantize", "nf4", "--json", "-q")
    assert code == 0
    metrics = json.loads((trained / "metrics.json").read_text())
    assert json.loads(out)["perplexity"] == pytest.approx(metrics["test"]["perplexity"], rel=1e-4)
    code, out, _ = run(capsys, "predict", "--adapter", trained, "--quantize", "nf4", "--max-new-tokens", "3",
                       "the cat", "-q")
    assert code == 0 and out.startswith("the cat")


def test_merge_from_a_quantized_load_writes_a_float_model_with_the_adapted_outputs(trained, files, tmp_path, capsys):
    code, _, _ = run(capsys, "merge", trained / "adapter", "--model", files["llama"], "--model-class", "causal-lm",
                     "--quantize", "nf4", "--out", tmp_path / "merged", "-q")
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # an ordinary float model
    assert getattr(merged.config, "quantization_config", None) is None
    quantized = splice.attach(AutoModelForCausalLM.from_pretrained(
        files["llama"], **splice.quantize.load_options("nf4")).eval())
    quantized.activate(quantized.load(trained / "adapter"))
    inputs = {"input_ids": torch.tensor([[5, 9, 14, 3, 77, 41]])}
    torch.testing.assert_close(main_output(merged, inputs), main_output(quantized, inputs), atol=1e-4, rtol=1e-4)


def test_refusals_are_one_line(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--model", files["llama"], "--data", files["jsonl"], "--task", "causal-lm",
                       "--method", "full", "--quantize", "nf4", "--out", tmp_path / "full", "-q")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--quantize" in lines[0] and "Traceback" not in err
    code, _, err = run(capsys, "train", "--model", files["llama"], "--quantize", "int3", "-q")
    assert code == 2 and "int3" in err and "nf4" in err


def test_torchao_int4_is_refused_on_one_line_naming_what_to_use(files, tmp_path, capsys):
    """torchao packs int4 only on CUDA; its CPU int4 is a byte per value: refused before the model loads."""
    code, _, err = run(capsys, "train", "--model", files["llama"], "--data", files["jsonl"], "--task", "causal-lm",
                       "--quantize", "torchao-int4", "--out", tmp_path / "int4", "-q")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "torchao-int4 is not offered" in lines[0]
    assert "nf4" in lines[0] and "torchao-int8" in lines[0] and not (tmp_path / "int4").exists()
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "torchao-int8" in out and "torchao-int4" not in out  # help lists only what is offered


def test_serve_on_the_quantized_base_answers_as_the_adapter_does_there(trained, files):
    """``splice serve --quantize nf4``: the engine's base is stored NF4 and a greedy completion through the HTTP
    API is the one the adapter gives on an NF4 load directly."""
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from splice.anatomy import quantization_of
    from splice.cli import build_parser
    from splice.cli.common import Steps
    from splice.cli.serve_app import build_engine
    from splice.serve import create_app

    args = build_parser().parse_args(["serve", "--model", str(files["llama"]), "--quantize", "nf4",
                                      "--device", "cpu", "--max-wait-ms", "1", "-q"])
    engine, base_name = build_engine(args, Steps(quiet=True))
    assert quantization_of(engine.model.base.model.layers[0].self_attn.q_proj) == "nf4"
    engine.residency.add_source("qlora", lambda: trained / "adapter")
    with TestClient(create_app(engine, base_name=base_name)) as client:
        response = client.post("/v1/completions", json={"model": "qlora", "prompt": "the cat", "max_tokens": 4,
                                                        "temperature": 0})
    assert response.status_code == 200, response.text
    reference = splice.attach(AutoModelForCausalLM.from_pretrained(
        files["llama"], **splice.quantize.load_options("nf4")).eval())
    reference.activate(reference.load(trained / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(files["llama"])
    ids = tokenizer("the cat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    assert response.json()["choices"][0]["text"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_an_int8_forward_does_not_flood_the_command_line(trained, capsys, caplog):
    """bitsandbytes warns on every int8 matmul that its input is cast to float16: once per layer per forward."""
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, "eval", trained, "--quantize", "int8", "--json", "-q")
    assert code == 0
    assert "MatMul8bitLt" not in caplog.text + err
