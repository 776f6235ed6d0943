"""Errors splice raises on bad input.

Each names what was wrong and how to fix it, so a user never has to read a
stack trace from deep inside torch. They subclass ``ValueError`` so code that
already catches bad-argument errors keeps working.
"""


class SpliceError(ValueError):
    """Base class of every error splice raises on purpose."""


class ConfigError(SpliceError):
    """A method config holds an invalid value."""


class AnatomyError(SpliceError):
    """The model's structure does not have what a method or a user asked for."""


class AdapterError(SpliceError):
    """An adapter name or operation is not valid in the model's current state."""


class CheckpointError(SpliceError):
    """An adapter folder is missing, corrupted, or does not fit this model."""


class DataError(SpliceError):
    """A data file or built-in data set cannot serve the requested task as given."""


class QuantizationError(SpliceError):
    """A quantized base cannot do what was asked as given (a library missing, a merge without dequantize)."""
