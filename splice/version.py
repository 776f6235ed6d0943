"""The splice version, written into every adapter.json."""

__version__ = "0.1.0"
