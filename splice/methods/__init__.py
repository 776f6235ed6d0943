"""Methods: one file each, registered by its ``@register`` decorator.

This package imports every module in it, so adding a method is adding its file:
the registry (:mod:`.registry`) then gives it to the model, saved adapters, the
CLI's ``splice train --method`` and the tests. The config classes of the files
here are also this package's (and ``splice``'s) public names: ``splice.LoRA``, ...
The contract a method follows is in :mod:`.base`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Delta, MethodConfig, Recipe
from .registry import METHODS, config_from_dict, recipe, recipes, register

_CONTRACT = {"base", "registry"}  # the modules that define methods, rather than being one
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _CONTRACT:
        importlib.import_module(f"{__name__}.{_module.name}")

# The config classes defined in this package, by class name (plugins' stay in their own packages).
BUILT_IN: dict[str, type[MethodConfig]] = {
    cls.__name__: cls for cls in METHODS.registered() if cls.__module__.startswith(f"{__name__}.")
}
globals().update(BUILT_IN)

__all__ = ["METHODS", "BUILT_IN", "Delta", "MethodConfig", "Recipe", "config_from_dict", "recipe", "recipes",
           "register", *BUILT_IN]
