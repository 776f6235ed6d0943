"""The method registry: every method splice can build, save and load, by name.

A method registers its config class with the :func:`register` decorator, in its
own file under ``splice/methods/`` (the package imports every file there), or in
another package that declares it under the entry-point group ``splice.methods``::

    [project.entry-points."splice.methods"]
    scale_shift = "my_package.ssf:ScaleShift"     # name = the class's ``method``

Entry points are read lazily: when a name is not registered (loading a saved
adapter of a plugin method in a fresh process) and when the methods are listed
(``splice train --method`` choices, :func:`recipes`), so ``import splice`` reads
no package metadata. A plugin that fails to import is skipped in listings with
a warning, and named with its error when its method is asked for.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from ..errors import ConfigError
from .base import MethodConfig, Recipe

ENTRY_POINTS = "splice.methods"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
Config = TypeVar("Config", bound=type[MethodConfig])


class Registry(Mapping[str, type[MethodConfig]]):
    """Method name -> config class, for built-in methods and installed plugins (found on first need)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[MethodConfig]] = {}
        self._recipes: dict[str, tuple[type[MethodConfig], Recipe]] = {}
        self._broken: dict[str, str] = {}  # entry point name -> why it did not load
        self._warned: set[str] = set()
        self._listed = False  # entry points read for a listing (a miss in find() reads them again)

    def register(self, cls: Config) -> Config:
        """Add the method config class ``cls`` under its ``method`` name; returns it (a class decorator)."""
        if not (isinstance(cls, type) and issubclass(cls, MethodConfig) and cls is not MethodConfig):
            raise ConfigError(f"register() takes a MethodConfig subclass, got {cls!r}.")
        name = cls.method
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{cls.__qualname__}.method must name the method (letters, digits, '_' or '-'), got {name!r}: "
                "set it as a class attribute, e.g. method: ClassVar[str] = \"my_method\"."
            )
        if "__dataclass_fields__" not in cls.__dict__:
            raise ConfigError(
                f"{cls.__qualname__} must be a dataclass, as every method config is: decorate it with "
                "@dataclass(frozen=True, kw_only=True) below @register."
            )
        known = self._classes.get(name)
        if known is cls:
            return cls
        if known is not None:
            raise ConfigError(
                f"Method name {name!r} is taken by {_where(known)}; {_where(cls)} needs another name."
            )
        offered = cls.training_recipes()
        taken = {recipe: _where(self._recipes[recipe][0]) for recipe in offered if recipe in self._recipes}
        if taken:
            raise ConfigError(f"{_where(cls)} offers training recipe(s) already offered elsewhere: {taken}.")
        self._classes[name] = cls
        self._recipes.update({recipe: (cls, plan) for recipe, plan in offered.items()})
        self._broken.pop(name, None)
        return cls

    def registered(self) -> tuple[type[MethodConfig], ...]:
        """The classes registered so far, in order, without looking for plugins."""
        return tuple(self._classes.values())

    def find(self, name: str) -> type[MethodConfig]:
        """The config class of method ``name``, or a clear error naming what splice knows."""
        if name not in self._classes:
            self._read_entry_points()
        if name in self._classes:
            return self._classes[name]
        if name in self._broken:
            raise ConfigError(f"Method {name!r} comes from a plugin that did not load: {self._broken[name]}")
        raise ConfigError(
            f"Unknown method {name!r}; splice knows {', '.join(sorted(self._classes))}. A method from another "
            f"package is found through its {ENTRY_POINTS!r} entry point: install that package."
        )

    def recipes(self) -> dict[str, Recipe]:
        """Every ``splice train --method`` name, in registration order (plugins last)."""
        self._listing()
        return {name: recipe for name, (_, recipe) in self._recipes.items()}

    # -- Mapping -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> type[MethodConfig]:
        try:
            return self.find(name)
        except ConfigError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        self._listing()
        return iter(list(self._classes))

    def __len__(self) -> int:
        self._listing()
        return len(self._classes)

    # -- plugins ----------------------------------------------------------------------------------------
    def _listing(self) -> None:
        """Read the entry points (once), and warn (once each) about plugins that did not load."""
        if not self._listed:
            self._listed = True
            self._read_entry_points()
        for name, error in self._broken.items():
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(f"splice: method plugin {name!r} did not load: {error}", RuntimeWarning, stacklevel=3)

    def _read_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=ENTRY_POINTS):
            if point.name in self._classes or point.name in self._broken:
                continue
            try:
                cls = point.load()
                if getattr(cls, "method", None) != point.name:
                    raise ConfigError(
                        f"the entry point is named {point.name!r} but {point.value} has method "
                        f"{getattr(cls, 'method', None)!r}; name the entry point after the method."
                    )
                self.register(cls)
            except Exception as error:  # a broken plugin must not take the other methods down with it
                self._broken[point.name] = f"{point.value}: {type(error).__name__}: {error}"


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


METHODS = Registry()
register = METHODS.register


def recipes() -> dict[str, Recipe]:
    """Every ``splice train --method`` name and its recipe (built-in methods' and installed plugins')."""
    return METHODS.recipes()


def recipe(name: str) -> Recipe:
    """The recipe of ``splice train --method name``, or an error listing them."""
    offered = recipes()
    if name not in offered:
        raise ConfigError(f"Unknown method {name!r}; choose one of {', '.join(offered)}.")
    return offered[name]


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Rebuild a method config from its ``to_dict()`` form, with a clear error for unknown methods."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"A method config must be a JSON object with a 'method' key, got {data!r}.")
    return METHODS.find(data["method"]).from_dict(data)


__all__ = ["ENTRY_POINTS", "METHODS", "Registry", "config_from_dict", "recipe", "recipes", "register"]
