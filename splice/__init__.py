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

# ruff: noqa: F401 -- every import here is a re-export; __all__ is computed on first use (it adds the registry's
# method configs), so ruff cannot see it.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AdapterError, AnatomyError, CheckpointError, ConfigError, DataError, SpliceError
from .version import __version__

# name -> the submodule that defines it (a submodule itself when the name is the submodule's)
_LAZY = {
    "attach": "adapted", "AdaptedModel": "model",
    "Adapter": "adapter", "BASE_NAME": "adapter",
    "Anatomy": "anatomy", "Site": "anatomy",
    **dict.fromkeys(("Stack", "Fuse", "Parallel", "Average", "Split", "BatchSplit"), "routing.compose"),
    "MethodConfig": "methods", "METHODS": "methods",
    "assets": "assets", "heads": "heads", "presets": "presets",
}

# What static tools and IDEs see. At run time __getattr__ imports the same names, and every method config the
# registry has from splice/methods/ (splice.LoRA, ...): a new method file needs no line here to be splice.<Name>.
if TYPE_CHECKING:
    from . import assets, heads, presets
    from .adapted import attach
    from .adapter import BASE_NAME, Adapter
    from .anatomy import Anatomy, Site
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
    from .model import AdaptedModel
    from .routing.compose import Average, BatchSplit, Fuse, Parallel, Split, Stack


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = module if _LAZY[name] == name else getattr(module, name)
    elif name == "__all__" or not name.startswith("_"):  # the method configs: from the registry
        methods = importlib.import_module(".methods", __name__).BUILT_IN
        if name == "__all__":
            value = [*_NAMES, *methods]
        elif name in methods:
            value = methods[name]
        else:
            raise AttributeError(f"module 'splice' has no attribute {name!r}")
    else:
        raise AttributeError(f"module 'splice' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(__getattr__("__all__")))


# Exported besides the method configs, which ``__all__`` (computed on first use) adds from the registry.
_NAMES = [
    "attach", "AdaptedModel", "Adapter", "Anatomy", "Site", "BASE_NAME", "presets", "assets", "MethodConfig", "METHODS",
    "Stack", "Fuse", "Parallel", "Average", "Split", "BatchSplit", "heads",
    "SpliceError", "ConfigError", "AnatomyError", "AdapterError", "CheckpointError", "DataError",
    "__version__",
]
