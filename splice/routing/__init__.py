"""Routing: which rows go through which setup, composition blocks, adapter banks, and the planner.

See ``docs/architecture.md``; the public composition blocks are re-exported by ``splice``.
"""

from ..hooks.programs import Leaf, Program, Soft
from .rows import Routed, RowIndex

__all__ = ["Leaf", "Program", "Routed", "RowIndex", "Soft"]
