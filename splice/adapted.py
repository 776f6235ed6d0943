"""``splice.attach``: wrap a Hugging Face model in an :class:`~splice.model.AdaptedModel` subclass of its own.

Its own job, apart from the model's bookkeeping: the subclass's ``forward`` advertises the base's
signature, because the HF Trainer reads it to decide which dataset columns to keep.
"""

from __future__ import annotations

import inspect
from typing import Mapping

from torch import nn

from .anatomy import RoleSpec
from .errors import AdapterError
from .heads import HEADS
from .model import AdaptedModel


def _with_adapter_names(signature: inspect.Signature) -> inspect.Signature:
    """The base's forward signature plus ``adapter_names`` and the heads' target names.

    The HF Trainer keeps only the dataset columns the signature names: per-row
    adapter names, and labels for a splice head on a bare backbone (which has none).
    """
    params = list(signature.parameters.values())
    present = {p.name for p in params}
    names = ["adapter_names"] + sorted({n for head in HEADS.values() for n in head.label_names} - present)
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names if n not in present]
    cut = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    return signature.replace(parameters=params[:cut] + extra + params[cut:])


_CLASSES: dict[type, type] = {}


def adapted_class(base_class: type) -> type:
    """An AdaptedModel subclass whose ``forward`` advertises the base's signature.

    The HF Trainer inspects ``model.forward`` to decide which dataset columns to keep;
    a bare ``*args, **kwargs`` would make it drop them all.
    """
    if base_class not in _CLASSES:

        def forward(self, *args, **kwargs):
            return AdaptedModel.forward(self, *args, **kwargs)

        forward.__signature__ = _with_adapter_names(inspect.signature(base_class.forward))
        forward.__doc__ = base_class.forward.__doc__
        _CLASSES[base_class] = type(f"Adapted{base_class.__name__}", (AdaptedModel,), {"forward": forward})
    return _CLASSES[base_class]


def attach(model: nn.Module, roles: Mapping[str, RoleSpec] | None = None) -> AdaptedModel:
    """Wrap a Hugging Face model so adapters can be added to it; its weights are frozen from here on.

    ``roles`` overrides or adds role -> module-path mappings (paths inside a block,
    e.g. ``{"q": "attn.q_proj"}``; ``"blocks"`` names the ModuleList of blocks)
    for models splice does not know.
    """
    if not isinstance(model, nn.Module):
        raise AdapterError(f"attach() needs a torch nn.Module (a Hugging Face model), got {type(model).__name__}.")
    if isinstance(model, AdaptedModel):
        raise AdapterError("This model is already attached: add adapters to it directly, or attach model.base.")
    return adapted_class(type(model))(model, roles)
