"""One training run, start to finish: data → backbone + adapter → Trainer → best checkpoint → test → files.

What a run writes in ``out``:

- ``adapter/``: the trained adapter (with its head and a model card that records
  the data, metrics, parameters and command line); for ``--method full`` also
  ``model/``, the fine-tuned base;
- ``metrics.json``: validation and test metrics, parameter counts, sizes, timings;
- ``curves.png``: training loss and the validation metric over steps;
- ``checkpoints/``: the Trainer's checkpoints (adapter-only), for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapted import attach
from ..checkpoint import write_adapter
from ..data import Splits, load_data
from ..errors import QuantizationError, SpliceError
from ..folders import write_folder
from ..methods import recipe
from . import lora_plus
from .backbone import load_backbone, task_head
from .config import TrainConfig
from .curves import plot_curves
from .encode import Collator, encode, pad_id
from .evaluation import TASK_METRIC, compute_metrics, full_metrics, keep_predictions
from .trainer import ADAPTER_DIR, AdapterTrainer


@dataclass
class TrainResult:
    """Where a run wrote its files and what it measured."""

    out: Path
    adapter: Path
    metrics: dict
    curves: Path | None
    main_process: bool = True  # False in the other processes of a distributed run (they write nothing)


def train(config: TrainConfig, command: str | None = None, say=print, progress: bool = True) -> TrainResult:
    """Train ``config``'s adapter (or full fine-tuning) and write the files listed in this module's doc.

    ``say`` receives the run's report lines; ``progress`` shows the Trainer's progress bars and logs. Both
    the bars and the log lines go to stderr (the Trainer prints its log lines to stdout, which we redirect),
    so that stdout holds only what the caller prints: ``splice train > results.txt`` keeps just the results.
    """
    from transformers import EarlyStoppingCallback, set_seed

    started = time.time()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: report once, from the first process
        say = _silent
    out = config.out_dir
    checkpoints = out / "checkpoints"
    resume_from = last_checkpoint(checkpoints) if config.resume else None
    if config.resume and resume_from is None:
        raise SpliceError(f"--resume: no checkpoint in {checkpoints} to resume from; run without --resume to start.")
    plan = recipe(config.method)
    options, lora_plus_ratio = lora_plus.split_options(config.options)
    method = plan.config(options)

    splits = read_splits(config)
    for note in splits.notes:
        say(f"data: {note}")
    say(f"data: {splits.source}: {len(splits.train):,} train / {len(splits.validation):,} validation / "
        f"{len(splits.test):,} test rows")

    if config.quantize and plan.trains_base:
        raise QuantizationError(f"--method {config.method} trains the base's own weights, which a quantized base "
                                "stores packed; drop --quantize, or train an adapter method on the quantized base.")
    base, tokenizer = load_backbone(config.model, config.task, config.quantize, config.compute_dtype)
    set_seed(config.seed)  # the adapter's and head's initial weights are part of the run: same seed, same start
    model = attach(base)
    name = adapter_name(config)
    model.add(name, method, head=task_head(config.task, splits.labels, config.head_layers, config.pooling,
                                               config.head_dropout))
    model.train_adapter(name)
    if plan.trains_base:
        model.base.requires_grad_(True)
    if config.gradient_checkpointing:
        model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    counts = parameter_counts(model, name)
    say(f"model: {config.model}, {config.method} adapter {name!r}: {counts['trainable']:,} trainable parameters "
        f"= {counts['trainable_percent']:.3f} % of the base")

    datasets = {split: encode(splits.split(split), config.task, tokenizer, config.tokens, splits.labels)
                for split in ("train", "validation", "test")}
    metric = TASK_METRIC[config.task]
    args = training_arguments(config, checkpoints, progress)
    record = run_record(config, splits, counts, command)
    trainer = AdapterTrainer(
        model=model, args=args, adapter_name=name, record=record, lora_plus_ratio=lora_plus_ratio,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"], data_collator=Collator(pad_id(tokenizer)),
        compute_metrics=None if config.task == "causal-lm" else compute_metrics(config.task, splits.labels),
        preprocess_logits_for_metrics=None if config.task == "causal-lm" else keep_predictions,
        callbacks=[EarlyStoppingCallback(config.patience)] if config.patience else None,
    )
    if not progress:  # with the bars off the Trainer prints every log line instead; quiet means neither
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    with redirect_stdout(sys.stderr):  # the Trainer's log lines (loss, eval metrics) are progress, not results
        before = None
        if config.task == "causal-lm" and resume_from is None:
            model.disable()
            before = trainer.evaluate(datasets["test"], metric_key_prefix="test")["test_loss"]
            model.train_adapter(name)
        trainer.train(resume_from_checkpoint=resume_from)
        model.eval()
        metrics = {
            "validation": full_metrics(trainer, datasets["validation"], config.task, splits.labels, "validation"),
            "test": full_metrics(trainer, datasets["test"], config.task, splits.labels, "test"),
        }
    if before is not None:
        metrics["test"]["perplexity_before"] = math.exp(before)
    summary = {
        **metrics, **counts, "method": config.method, "task": config.task, "data": splits.source,
        "rows": record["rows"], "best_checkpoint": trainer.state.best_model_checkpoint,
        "steps": trainer.state.global_step,
        "train_seconds": round(time.time() - started, 1),
        "peak_memory_mb": peak_memory_mb(),
    }
    if not trainer.is_world_process_zero():  # under torchrun, one process writes the results
        return TrainResult(out=out, adapter=out / ADAPTER_DIR, metrics=summary, curves=None, main_process=False)
    scalars = {split: {k: v for k, v in metrics[split].items() if isinstance(v, (int, float))} for split in metrics}
    adapter_dir = write_adapter(model.anatomy, model.adapters[name], name, out / ADAPTER_DIR,
                                training={**record, "metrics": scalars})
    summary["adapter_mb"] = round(sum(f.stat().st_size for f in adapter_dir.iterdir()) / 1e6, 3)
    if plan.trains_base:  # full fine-tuning: the base itself is the result
        def fill(staging: Path) -> None:
            model.base.save_pretrained(staging)
            tokenizer.save_pretrained(staging)

        write_folder(out / "model", fill, marker="config.json")
    write_json(out / "metrics.json", summary)
    plot = plot_curves(trainer.state.log_history, metric, out / "curves.png",
                       f"{config.method} on {splits.source} ({config.model})")
    return TrainResult(out=out, adapter=adapter_dir, metrics=summary, curves=plot)


def training_arguments(config: TrainConfig, checkpoints: Path, progress: bool = True, **overrides):
    """The ``TrainingArguments`` of ``config``: what ``splice train`` runs, and what a federated client trains
    with each round (``overrides`` there turn off per-epoch evaluation and checkpoints)."""
    from transformers import TrainingArguments

    metric = TASK_METRIC[config.task]
    by_steps = config.eval_every is not None
    values = dict(
        output_dir=str(checkpoints), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.rate,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=config.scheduler, seed=config.seed, logging_steps=config.logging_steps,
        eval_strategy="steps" if by_steps else "epoch", save_strategy="steps" if by_steps else "epoch",
        eval_steps=config.eval_every, save_steps=config.eval_every, save_total_limit=config.save_total_limit,
        load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=metric != "loss",
        report_to="none", remove_unused_columns=False, label_names=["labels"],
        prediction_loss_only=config.task == "causal-lm", dataloader_num_workers=config.workers,
        dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=not progress,
        # On CPU, say so: only then does torchrun / accelerate launch run data-parallel (gloo) instead of N copies.
        use_cpu=not torch.cuda.is_available(), ddp_backend=distributed_backend(),
        ddp_find_unused_parameters=False,  # every trainable tensor is used in each forward
        **precision_flags(config.precision), **warmup(config.warmup_ratio),
    )
    return TrainingArguments(**{**values, **overrides})


def distributed_backend() -> str | None:
    """gloo for a multi-process run on CPU; otherwise the launcher's default (NCCL on GPUs, none alone)."""
    return "gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None


def _silent(line: str) -> None:
    pass


def last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* checkpoint in ``folder``: a run killed while writing one leaves it without
    ``trainer_state.json`` (the Trainer writes that file last), and resuming from it would fail or go wrong."""
    found = [(int(c.name.rpartition("-")[2]), c) for c in folder.glob("checkpoint-*")
             if c.name.rpartition("-")[2].isdigit() and (c / "trainer_state.json").is_file()] if folder.is_dir() else []
    return str(max(found)[1]) if found else None


def read_splits(config: TrainConfig) -> Splits:
    return load_data(config.data, config.task, columns=config.columns, sizes=config.sizes, seed=config.data_seed,
                     limit=config.limit, streaming=config.streaming)


def adapter_name(config: TrainConfig) -> str:
    """The adapter's name: the dataset's name, made a valid adapter name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", config.data_name)[:128] or "adapter"


def parameter_counts(model, name: str) -> dict:
    from ..anatomy.quantized import parameter_count

    base = parameter_count(model.base)  # a packed 4-bit weight's numel() is half its size
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "base_parameters": base, "trainable_percent": 100 * trainable / base,
            "adapter_parameters": model.adapters[name].num_parameters()}


def precision_flags(precision: str) -> dict:
    """TrainingArguments flags for ``precision``; ``auto``: bf16 on GPUs that have it, fp16 on other GPUs, else fp32."""
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise SpliceError(f"--precision {precision} needs a GPU; on CPU train in fp32 (--precision fp32 or auto).")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def warmup(ratio: float) -> dict:
    """The warm-up share as TrainingArguments takes it: ``warmup_ratio`` up to transformers 4.x, a float
    ``warmup_steps`` from 5.0 (which dropped ``warmup_ratio``)."""
    if not ratio:
        return {}
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def peak_memory_mb() -> float:
    """Peak GPU memory of this process, or its peak resident memory on CPU."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_record(config: TrainConfig, splits: Splits, counts: dict, command: str | None) -> dict:
    """What adapter.json and the model card record about the run: enough to evaluate it or run it again."""
    source = config.data if isinstance(config.data, (str, os.PathLike)) else splits.source  # a Dataset: described
    return {"model": config.model, "task": config.task, "data": splits.source,
            "data_source": str(Path(source).resolve()) if Path(source).exists() else str(source),
            "rows": {split: len(splits.split(split)) for split in ("train", "validation", "test")},
            "method": config.method, "options": config.options, "max_length": config.tokens,
            "epochs": config.epochs, "learning_rate": config.rate,
            "seed": config.seed, "data_seed": config.data_seed,
            "trainable_percent": round(counts["trainable_percent"], 4), "command": command or "",
            **({"quantize": config.quantize, "compute_dtype": config.compute_dtype} if config.quantize else {}),
            **({"fine_tuned_model": "../model"} if recipe(config.method).trains_base else {})}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
