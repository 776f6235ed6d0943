"""splice: adapter layers spliced into frozen Hugging Face models.

    import splice
    model = splice.attach(hf_model)                       # base frozen from here on
    model.add("sentiment", splice.Bottleneck())           # Pfeiffer bottleneck
    model.train_adapter("sentiment")                      # only its parameters train
    model.save("sentiment", "out/sentiment")

A model is a frozen base plus named deltas, applied through forward hooks at
the sites the anatomy finds (attention projections, FFN, sublayers).

Only the errors and the version are imported with the package; every other
name below is imported on first use (PEP 562), because they need torch and
transformers, which take seconds to import: the ``splice`` command line
answers ``--help``, ``--version`` and commands that touch no model without
them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AdapterError, AnatomyError, CheckpointError, ConfigError, DataError, SpliceError
from .version import __version__

# name -> the submodule that defines it (a submodule itself when the name is the submodule's)
_LAZY = {
    "attach": "model", "AdaptedModel": "model",
    "Adapter": "adapter", "BASE_NAME": "adapter",
    "Anatomy": "anatomy", "Site": "anatomy",
    **dict.fromkeys(("Stack", "Fuse", "Parallel", "Average", "Split", "BatchSplit"), "compose"),
    **dict.fromkeys(("Bottleneck", "LoRA", "IA3", "BitFit", "Fusion", "PromptTuning", "PrefixTuning", "Union",
                     "HeadOnly", "MethodConfig", "METHODS"), "methods"),
    "assets": "assets", "heads": "heads", "presets": "presets",
}

if TYPE_CHECKING:  # what static tools and IDEs see; at run time __getattr__ imports the same names
    from . import assets, heads, presets
    from .adapter import BASE_NAME, Adapter
    from .anatomy import Anatomy, Site
    from .compose import Average, BatchSplit, Fuse, Parallel, Split, Stack
    from .methods import (
        IA3,
        METHODS,
        BitFit,
        Bottleneck,
        Fusion,
        HeadOnly,
        LoRA,
        MethodConfig,
        PrefixTuning,
        PromptTuning,
        Union,
    )
    from .model import AdaptedModel, attach


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'splice' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    value = module if _LAZY[name] == name else getattr(module, name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "attach", "AdaptedModel", "Adapter", "Anatomy", "Site", "BASE_NAME",
    "Bottleneck", "LoRA", "IA3", "BitFit", "Fusion", "PromptTuning", "PrefixTuning", "Union", "HeadOnly", "presets",
    "MethodConfig", "METHODS",
    "Stack", "Fuse", "Parallel", "Average", "Split", "BatchSplit", "heads", "assets",
    "SpliceError", "ConfigError", "AnatomyError", "AdapterError", "CheckpointError", "DataError",
    "__version__",
]
