"""The HF ``Trainer``, with checkpoints that hold what trains and nothing else.

The plain ``Trainer`` saves ``model.state_dict()``: for an adapted model that is
the whole frozen base again at every checkpoint (and it fails outright on tied
embeddings). :class:`AdapterTrainer` writes, per checkpoint:

- ``trainable.safetensors``: every parameter that requires grad, by its name in
  the model (the adapter's training-time tensors, such as a prefix's MLP, so a
  resumed run continues exactly; for full fine-tuning, the whole base);
- ``adapter/``: the adapter as a normal splice folder, loadable on its own;

and resumes and keeps the best checkpoint by copying those tensors back in
place, so the optimizer's references stay valid. Everything else (optimizer,
scheduler, RNG states, DDP/FSDP through accelerate, early stopping) is the
``Trainer``'s own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Trainer

from ..checkpoint import write_adapter
from ..errors import CheckpointError
from . import lora_plus

TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"


class AdapterTrainer(Trainer):
    """``Trainer`` for a :class:`splice.AdaptedModel` whose adapter ``adapter_name`` trains.

    ``record`` (how the run was set up) goes into each checkpoint's adapter.json, so a
    checkpoint's adapter can be evaluated like the final one. ``lora_plus_ratio`` trains LoRA's ``B`` at that
    multiple of the learning rate (LoRA+, :mod:`.lora_plus`).
    """

    def __init__(self, *args, adapter_name: str, record: dict | None = None, lora_plus_ratio: float | None = None,
                 **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if model is not None:
            # The Trainer refuses a quantized base unless it sees peft's flag for "trainable adapters attached";
            # splice's adapters are exactly that (and the model reads is_quantized from its base).
            model._hf_peft_config_loaded = True
        super().__init__(*args, **kwargs)
        self.adapter_name, self.record, self.lora_plus_ratio = adapter_name, record, lora_plus_ratio

    def create_optimizer(self, *args):  # transformers 5 passes the model, 4.x nothing
        if self.lora_plus_ratio is None or self.optimizer is not None:
            return super().create_optimizer(*args)
        model = args[0] if args and args[0] is not None else self.model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = lora_plus.parameter_groups(model, self.get_decay_parameter_names(model), self.args.learning_rate,
                                            self.args.weight_decay, self.lora_plus_ratio)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().contiguous().cpu() for name, p in trainable(self.model).items()}
        partial = folder / f".{TRAINABLE_FILE}.{os.getpid()}.tmp"
        save_file(tensors, str(partial), metadata={"format": "pt"})
        os.replace(partial, folder / TRAINABLE_FILE)
        name = self.adapter_name
        write_adapter(self.model.anatomy, self.model.adapters[name], name, folder / ADAPTER_DIR, training=self.record)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        restore_trainable(model or self.model, Path(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        restore_trainable(self.model, Path(self.state.best_model_checkpoint))


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that require grad, by name (shared parameters once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model: torch.nn.Module, folder: Path) -> None:
    """Copy the tensors of ``folder/trainable.safetensors`` into ``model``'s trainable parameters, in place."""
    path = folder / TRAINABLE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a splice training checkpoint ({TRAINABLE_FILE} is missing).")
    params = trainable(model)
    with safe_open(str(path), framework="pt") as handle:
        saved = set(handle.keys())
        if saved != set(params):
            missing, extra = sorted(set(params) - saved)[:3], sorted(saved - set(params))[:3]
            raise CheckpointError(f"{path} was written by a run with other trainable parameters (missing {missing}, "
                                  f"unexpected {extra}); resume with the same method and options.")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(handle.get_tensor(name))
