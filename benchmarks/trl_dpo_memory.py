"""Peak memory of DPO training steps under TRL: splice's DPOTrainer vs peft + TRL, same model, data and batch.

    python benchmarks/trl_dpo_memory.py --quick            # tiny Llama, seconds
    python benchmarks/trl_dpo_memory.py                    # SmolLM2-135M (the demo decoder), a minute or two on CPU

Both arms train LoRA r8 alpha16 on q and v (dropout 0.1) with ``ref_model=None``:
peft's reference is its model with the adapter disabled, splice's the same weights
with every row routed to the base (``splice.integrations.trl``). Each arm runs in
its own fresh process; the figure is the peak during ``STEPS`` DPO steps over the
memory in use once the trainer is built (CUDA: ``torch.cuda.max_memory_allocated``;
CPU: peak RSS, ``VmHWM`` reset through ``/proc/self/clear_refs``), so it holds the
adapter's gradients, AdamW's state, the policy's and the reference's forwards. Also
printed: the parameters the trainer holds (policy plus reference) against the base's,
which shows that neither arm keeps a second copy of the model. Prints a table and
the splice ÷ peft ratio (goal: at most 1.0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import memory_now, memory_peak  # noqa: E402

ARMS = ("splice", "peft")


def pairs(rows: int, max_length: int):
    """Preference pairs from bbc-headlines, each prompt cut to its last ~half of ``max_length`` tokens (at ~4
    characters a token) so that truncation leaves the answers whole."""
    import datasets

    from splice.data import load_data

    records = load_data("bbc-headlines", "causal-lm", sizes=(rows + 1, 0, 0)).train
    return datasets.Dataset.from_list([{"prompt": r["prompt"][-2 * max_length:], "chosen": r["completion"],
                                        "rejected": o["completion"]} for r, o in zip(records, records[1:])])


def build(arm: str, folder: Path, args, out: str):
    """The trainer of one arm, ready to train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.eos_token is None:  # the tiny test Llama's tokenizer (MiniLM's) ends sequences with [SEP]
        tokenizer.eos_token = tokenizer.sep_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(folder).to(device)
    config = DPOConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       max_length=args.max_length, learning_rate=5e-4, logging_steps=1, save_strategy="no",
                       report_to=[], use_cpu=device == "cpu", disable_tqdm=True, seed=0)
    data = pairs(args.steps * args.batch_size, args.max_length)
    if arm == "peft":
        from peft import LoraConfig
        from trl import DPOTrainer

        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                          task_type="CAUSAL_LM")
        return DPOTrainer(base, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    import splice
    from splice.integrations.trl import DPOTrainer
    from splice.methods import LoRA

    model = splice.attach(base)
    model.add("dpo", LoRA(r=8, alpha=16.0, targets=("q", "v"), dropout=0.1))
    model.train_adapter("dpo")
    return DPOTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)


def held_parameters(trainer) -> int:
    """Distinct parameter tensors' elements the trainer reaches through its policy and its reference model."""
    seen = {}
    for module in (trainer.model, trainer.ref_model):
        for param in module.parameters() if module is not None else ():
            seen[param.data_ptr()] = param.numel()
    return sum(seen.values())


def measure(arm: str, folder: Path, args) -> dict:
    """In this fresh process: build ``arm``'s trainer, then the peak memory of its DPO steps."""
    with tempfile.TemporaryDirectory() as out:
        trainer = build(arm, folder, args, out)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        base_parameters = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora" not in n.lower()
                              and "adapters." not in n)
        start = memory_now(device)
        trainer.train()
        peak = memory_peak(device) - start
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"arm": arm, "peak_mb": peak / 2**20, "held_parameters": held_parameters(trainer),
            "base_parameters": base_parameters, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # run one arm in this process
    parser.add_argument("--model-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.arm:
        print(json.dumps(measure(args.arm, Path(args.model_folder), args)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = _tiny_llama(Path(scratch)) if args.quick else _smollm2()
        rows = []
        for arm in ARMS:
            command = [sys.executable, __file__, "--arm", arm, "--model-folder", str(folder), "--steps",
                       str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {arm} arm failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (peak RSS)"
    print(f"DPO, {args.steps} steps, batch {args.batch_size} pairs, max length {args.max_length}, "
          f"{'tiny Llama' if args.quick else 'SmolLM2-135M'}, {device}")
    print(f"{'arm':<8} {'peak MB':>9} {'params held':>12} {'base params':>12}  losses")
    for row in rows:
        print(f"{row['arm']:<8} {row['peak_mb']:9.1f} {row['held_parameters']:12,} {row['base_parameters']:12,}  "
              f"{', '.join(f'{loss:.4f}' for loss in row['losses'])}")
    splice_row, peft_row = rows
    print(f"splice / peft peak memory: {splice_row['peak_mb'] / peft_row['peak_mb']:.2f}x")


def _tiny_llama(scratch: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from train_fixtures import save_tiny

    return save_tiny("llama", scratch / "llama")


def _smollm2() -> Path:
    from splice.assets import smollm2_dir

    return smollm2_dir()


if __name__ == "__main__":
    main()
