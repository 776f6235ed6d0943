"""Sites and hooks: the per-site programs, the HookSet that runs them, soft-token handlers, input grads.

Everything here runs inside the base model's forward. See ``docs/architecture.md``.
"""

from .hookset import HookSet
from .programs import Leaf, Program, Soft

__all__ = ["HookSet", "Leaf", "Program", "Soft"]
