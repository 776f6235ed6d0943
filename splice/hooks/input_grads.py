"""Gradient checkpointing over a frozen base: the embeddings' output must require grad then, and only then.

With reentrant checkpointing (``use_reentrant=True``, transformers 4.x's default), a
checkpointed block whose inputs need no grad returns outputs that need none either,
so nothing reaches the adapters inside it. Making the input embeddings' output require
grad (what Hugging Face's ``enable_input_require_grads`` does, and peft with it) fixes
that, but without checkpointing it costs a backward pass through every block below the
first adapter that nothing needs: the whole first block for a Pfeiffer adapter, the
input gradients of the first block's projections for LoRA. So the hook here asks, at
each forward, whether a block of the base is checkpointing in training mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class InputGrads:
    """A forward hook on the base's input embeddings that makes their output require grad while it checkpoints."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self._handles: list[RemovableHandle] = []
        self._switches: list[nn.Module] = []

    def install(self) -> None:
        """Hook every input embedding of the base once (idempotent; models without embeddings get none)."""
        if self._handles:
            return
        # Hugging Face puts a ``gradient_checkpointing`` flag on the modules it can checkpoint.
        self._switches = [m for m in self.base.modules() if hasattr(m, "gradient_checkpointing")]
        seen: set[int] = set()
        for module in self.base.modules():
            getter = getattr(module, "get_input_embeddings", None)
            try:
                embeddings = getter() if callable(getter) else None
            except NotImplementedError:  # models without input embeddings (e.g. some vision models)
                continue
            if isinstance(embeddings, nn.Module) and id(embeddings) not in seen:
                seen.add(id(embeddings))
                self._handles.append(embeddings.register_forward_hook(self._require_grad))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def checkpointing(self) -> bool:
        """Whether a block of the base recomputes its activations in this forward (HF's own test, per module)."""
        return any(m.training and getattr(m, "gradient_checkpointing", False) is True for m in self._switches)

    def _require_grad(self, module: nn.Module, args: tuple, output):
        if isinstance(output, torch.Tensor) and torch.is_grad_enabled() and self.checkpointing():
            output.requires_grad_(True)
