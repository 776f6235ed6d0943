"""Published combinations of methods, as :class:`splice.Union` configs.

    model.add("task", splice.presets.mam())        # prefix + scaled parallel adapter
    model.add("task", splice.presets.unipelt())    # LoRA + adapter + prefix, gated

They live beside :class:`~splice.methods.union.Union`, whose recipes build them.
"""

from .methods.union import mam, unipelt

__all__ = ["mam", "unipelt"]
