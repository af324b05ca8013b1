"""The bridge's version: the single source read by packaging and `--version`."""

__version__ = "2.0.0"
