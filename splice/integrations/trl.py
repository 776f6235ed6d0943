"""TRL's ``SFTTrainer`` and ``DPOTrainer`` for a :class:`splice.AdaptedModel`, as peft models get them.

TRL recognises peft models by class and gives them two things a splice model
needs too: DPO's reference model is the same model with its adapter switched off
(no second copy of the weights in memory), and the fused LM head TRL patches in
(log-probabilities without materialising the logits) goes on the Hugging Face
model *inside* the wrapper, so the wrapper's forward still routes the adapters.
These subclasses do both for splice, and checkpoint only what trains (the
adapter, as :class:`splice.train.trainer.AdapterTrainer` does); everything else
is TRL's own::

    model = splice.attach(AutoModelForCausalLM.from_pretrained(...))
    model.add("chat", LoRA(r=8)); model.train_adapter("chat")
    DPOTrainer(model, args=DPOConfig(...), train_dataset=pairs, processing_class=tokenizer).train()
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from torch import nn

from ..errors import SpliceError
from ..model import AdaptedModel

try:
    import trl
except ImportError:
    raise SpliceError("Training under TRL needs trl: pip install 'splice[trl]'.") from None

from ..train.trainer import AdapterTrainer

BASE_ONLY = "__base__"  # adapter_names entry for a row that runs the base alone


class ReferenceModel(nn.Module):
    """The policy's base with every adapter off, for DPO's reference log-probabilities: a view, not a copy.

    Each call runs the policy model itself with all rows routed to ``"__base__"``, so
    its weights are shared and the active adapter is never switched off and on. The
    policy's routing is put back afterwards: gradient checkpointing recomputes the
    policy's forward during backward, after this call, and must see its adapters.
    The policy is held outside the module tree, so moving or preparing this view
    touches nothing.
    """

    def __init__(self, policy: AdaptedModel):
        super().__init__()
        object.__setattr__(self, "policy", policy)

    @property
    def config(self):
        return self.policy.config

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs):
        rows = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        hooks = self.policy.hooks
        routing = hooks.plan, hooks.skip_layers
        try:
            return self.policy(input_ids=input_ids, adapter_names=[BASE_ONLY] * rows, **kwargs)
        finally:
            hooks.plan, hooks.skip_layers = routing


class SFTTrainer(AdapterTrainer, trl.SFTTrainer):
    """``trl.SFTTrainer`` for a splice model: its ``adapter_name`` (default: the one active adapter) trains."""

    def __init__(self, model: AdaptedModel, *args, adapter_name: str | None = None, **kwargs):
        name = _trained_adapter(model, adapter_name, "SFTTrainer")
        with _fused_head_inside("trl.trainer.sft_trainer"):
            super().__init__(model, *args, adapter_name=name, **kwargs)


class DPOTrainer(AdapterTrainer, trl.DPOTrainer):
    """``trl.DPOTrainer`` for a splice model; without ``ref_model`` the reference is the base, adapters off."""

    def __init__(self, model: AdaptedModel, ref_model: nn.Module | None = None, *args,
                 adapter_name: str | None = None, **kwargs):
        name = _trained_adapter(model, adapter_name, "DPOTrainer")
        with _fused_head_inside("trl.trainer.dpo_trainer"):
            super().__init__(model, ReferenceModel(model) if ref_model is None else ref_model, *args,
                             adapter_name=name, **kwargs)


def _trained_adapter(model: nn.Module, name: str | None, trainer: str) -> str:
    """The adapter that trains: ``name``, else the model's one active adapter; a clear error otherwise."""
    if not isinstance(model, AdaptedModel):
        raise SpliceError(f"splice's {trainer} trains a splice.AdaptedModel (splice.attach(model) plus an adapter), "
                          f"got {type(model).__name__}; for a plain model use trl.{trainer} itself.")
    if name is None:
        if len(model.active) != 1:
            raise SpliceError(f"{trainer}: the model has {len(model.active) or 'no'} active adapters "
                              f"({', '.join(model.active) or 'none'}); call model.train_adapter(NAME) first, or pass "
                              "adapter_name=NAME.")
        name = model.active[0]
    if name not in model.adapters:
        raise SpliceError(f"{trainer}: no adapter {name!r} on the model (it has "
                          f"{', '.join(model.adapters) or 'none'}).")
    return name


@contextlib.contextmanager
def _fused_head_inside(module_name: str):
    """While a TRL trainer is built, put the fused LM head it adds on the HF model inside the splice wrapper.

    TRL patches ``forward`` of the model it is given; on the wrapper that would call
    the backbone directly, past the code that routes the adapters. The reference
    view needs none of its own: it calls the policy, whose base carries the head.
    """
    module = importlib.import_module(module_name)
    original = module.add_fused_lm_head

    def inside(model: nn.Module, *args, **kwargs) -> None:
        if isinstance(model, ReferenceModel):
            return
        original(model.base if isinstance(model, AdaptedModel) else model, *args, **kwargs)

    module.add_fused_lm_head = inside
    try:
        yield
    finally:
        module.add_fused_lm_head = original


__all__ = ["DPOTrainer", "ReferenceModel", "SFTTrainer"]
