"""Reading another library's tensor file safely: safetensors, or a ``.bin`` loaded weights-only.

A ``.bin`` is a pickle, and unpickling can run arbitrary code; splice only ever
reads one with ``torch.load(weights_only=True)``, which accepts tensors and
plain containers and refuses anything else.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError


def read_weights(folder: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, torch.Tensor]]:
    """The tensors of the first file of ``names`` present in ``folder`` (safetensors names first), and its path."""
    path = next((folder / name for name in names if (folder / name).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder} has no weights file: expected one of {', '.join(names)}.")
    if path.suffix == ".safetensors":
        try:
            return path, load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is corrupted or truncated ({error}).") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} needs more than tensors to load: it pickles other objects, and unpickling them could run "
            f"arbitrary code, so splice refuses (torch.load(weights_only=True) said: {str(error).splitlines()[0]}). "
            "If you trust the file, re-save its tensors as safetensors with the library that wrote it."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable torch file ({error}); it may be truncated.") from error
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path} must hold a flat mapping of names to tensors, got {type(state).__name__}.")
    return path, state
