"""An adapter's tensors as the Flower record that travels, and back: nothing of the base is ever in it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord

from ..errors import AdapterError

if TYPE_CHECKING:
    from ..model import AdaptedModel


def adapter_arrays(model: "AdaptedModel", name: str) -> ArrayRecord:
    """Adapter ``name``'s deltas and head, as the record a round sends (CPU copies; the model is untouched)."""
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.adapters[name].state_dict().items()}
    return ArrayRecord(state)


def load_arrays(model: "AdaptedModel", name: str, arrays: ArrayRecord) -> None:
    """Put ``arrays`` into adapter ``name``; a record of another adapter's layout is refused, naming the keys."""
    received = arrays.to_torch_state_dict()
    expected = model.adapters[name].state_dict()
    if received.keys() != expected.keys() or any(received[k].shape != expected[k].shape for k in expected):
        missing, extra = sorted(expected.keys() - received.keys()), sorted(received.keys() - expected.keys())
        raise AdapterError(
            f"The round's tensors do not fit adapter {name!r} (missing {missing[:3]}, unexpected {extra[:3]}, "
            "or other shapes): server and clients must use the same model, method and options.")
    with torch.no_grad():
        model.adapters[name].load_state_dict(received)


def array_bytes(arrays: ArrayRecord) -> int:
    """The payload size of ``arrays`` in bytes: what one message of a round carries."""
    return sum(len(array.data) for array in arrays.values())
