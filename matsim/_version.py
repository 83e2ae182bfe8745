"""Single source of matsim's version (read by pyproject and written into checkpoints)."""

__version__ = "0.1.0"
