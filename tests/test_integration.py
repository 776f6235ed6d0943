"""The adapted model inside the tools users already have: HF Trainer, dtype/device moves, torch.compile."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

import splice

from tiny_models import tiny_inputs, tiny_model


def _dataset(n=8, seq=7, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        rows.append({
            "input_ids": torch.randint(3, vocab, (seq,), generator=g),
            "attention_mask": torch.ones(seq, dtype=torch.long),
            "labels": torch.tensor(i % 3),
            "text": f"row {i}",  # a column the model does not take: Trainer must drop it by signature
        })
    return rows


def test_trains_under_hf_trainer_unchanged(tmp_path):
    model = splice.attach(tiny_model("bert", head="classification"))
    model.add("sentiment", splice.LoRA(r=4, targets=["q", "v"]), head="classifier")
    model.train_adapter("sentiment")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapters["sentiment"].state_dict().items()}

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             logging_strategy="no")
    result = Trainer(model=model, args=args, train_dataset=_dataset()).train()

    assert result.global_step == 3
    for key, tensor in model.base.state_dict().items():
        assert torch.equal(tensor, base_before[key]), f"Trainer changed base tensor {key}"
    after = model.adapters["sentiment"].state_dict()
    assert not torch.equal(after["head.weight"], adapter_before["head.weight"])
    assert any(not torch.equal(after[k], adapter_before[k]) for k in after if "lora_A" in k)


def test_forward_signature_is_the_base_signature():
    import inspect

    model = splice.attach(tiny_model("llama", head="lm"))
    params = inspect.signature(model.forward).parameters
    assert "input_ids" in params and "labels" in params and "attention_mask" in params


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_moves_with_to_and_half(dtype):
    model = splice.attach(tiny_model("llama"))
    inputs = tiny_inputs("llama")
    model.add("a", splice.LoRA(r=4, targets="all-linear"))
    model.add("b", splice.Bottleneck(r=4))
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.activate("a", "b")
    with torch.no_grad():
        full = model(**inputs).last_hidden_state
        model.half() if dtype == torch.float16 else model.to(dtype)
        low = model(**inputs).last_hidden_state
    assert low.dtype == dtype
    assert all(p.dtype == dtype for p in model.adapters.parameters())
    torch.testing.assert_close(low.float(), full, atol=0.1, rtol=0.05)


def test_torch_compile_runs_and_follows_adapter_switches():
    model = splice.attach(tiny_model("gpt2"))
    inputs = tiny_inputs("gpt2")
    for name in ("a", "b"):
        model.add(name, splice.LoRA(r=4, targets=["q", "v"]))
        with torch.no_grad():
            for p in model.adapters[name].parameters():
                p.add_(torch.randn_like(p) * 0.2)
    eager = {}
    with torch.no_grad():
        for name in ("a", "b"):
            model.activate(name)
            eager[name] = model(**inputs).last_hidden_state
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        for name in ("a", "b", "a"):
            model.activate(name)
            torch.testing.assert_close(compiled(**inputs).last_hidden_state, eager[name])
    model.train_adapter("a")
    compiled(**inputs).last_hidden_state.sum().backward()
    assert all(p.grad is not None for p in model.adapters["a"].parameters())


def test_summary_table_lists_every_adapter(capsys):
    model = splice.attach(tiny_model("bert"))
    model.add("sentiment", splice.Bottleneck(reduction_factor=16))
    model.add("nli", splice.LoRA(r=8, alpha=16, targets=["q", "v"]))
    model.activate("nli")
    report = model.summary()
    printed = capsys.readouterr().out
    assert "sentiment" in printed and "nli" in printed and "MB on disk" in printed
    rows = {row.name: row for row in report.rows}
    # BERT hidden 32, 2 layers: bottleneck 32 -> 2 -> 32 at the FFN; LoRA r=8 on q and v (32x32).
    assert rows["sentiment"].parameters == 2 * (32 * 2 + 2 + 2 * 32 + 32)
    assert rows["nli"].parameters == 2 * 2 * (8 * 32 + 32 * 8)
    assert rows["nli"].status == "active" and rows["sentiment"].status == "-"
    base = sum(p.numel() for p in model.base.parameters())
    assert rows["nli"].percent_of_base == pytest.approx(100 * rows["nli"].parameters / base)
    assert rows["nli"].megabytes == pytest.approx(rows["nli"].parameters * 4 / 1e6)
