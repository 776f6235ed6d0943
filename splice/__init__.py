"""splice: adapter layers spliced into frozen Hugging Face models.

    import splice
    model = splice.attach(hf_model)                       # base frozen from here on
    model.add("sentiment", splice.Bottleneck())           # Pfeiffer bottleneck
    model.train_adapter("sentiment")                      # only its parameters train
    model.save("sentiment", "out/sentiment")

A model is a frozen base plus named deltas, applied through forward hooks at
the sites the anatomy finds (attention projections, FFN, sublayers).
"""

from . import assets, heads, presets
from .adapter import BASE_NAME, Adapter
from .anatomy import Anatomy, Site
from .compose import Average, BatchSplit, Fuse, Parallel, Split, Stack
from .errors import AdapterError, AnatomyError, CheckpointError, ConfigError, DataError, SpliceError
from .methods import BUILT_IN, METHODS, MethodConfig
from .model import AdaptedModel, attach
from .version import __version__

globals().update(BUILT_IN)  # every method config of splice/methods/ (splice.LoRA, ...), as the registry has them

__all__ = [
    "attach", "AdaptedModel", "Adapter", "Anatomy", "Site", "BASE_NAME",
    *BUILT_IN, "presets", "assets", "MethodConfig", "METHODS",
    "Stack", "Fuse", "Parallel", "Average", "Split", "BatchSplit", "heads",
    "SpliceError", "ConfigError", "AnatomyError", "AdapterError", "CheckpointError", "DataError",
    "__version__",
]
