"""Errors a user can cause.

Every exception that derives from :class:`MatsimError` is a user-facing problem (bad file, bad config, unknown
element, overlapping atoms, missing checkpoint, ...). The CLI prints its message on one line and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MatsimError(Exception):
    """Base class of user-facing errors: the message alone must tell the user what is wrong."""

    exit_code: int = 2


class ConfigError(MatsimError, ValueError):
    """A configuration file or value is invalid (broken YAML, unknown key, bad value)."""


class CheckpointError(MatsimError, OSError):
    """A checkpoint is missing, corrupt, or incompatible with this version of matsim."""


class StructureError(MatsimError, ValueError):
    """An input structure is unusable (unknown element, overlapping atoms, bad cell)."""


class InputFileError(MatsimError, OSError):
    """An input file is missing or cannot be parsed."""
