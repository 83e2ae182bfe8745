"""Checkpoint files: one file holding a model's name, hyperparameters, weights, dataset statistics, units and version.

A checkpoint is data, never code: it is a plain dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` and read with ``torch.load(weights_only=True)``. Writing is atomic (temporary file, then rename), so
an interrupted save never destroys the previous checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from matsim._version import __version__
from matsim.core.errors import CheckpointError
from matsim.core.io import atomic_torch_save

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "FORMAT", "FORMAT_VERSION", "UNITS"]

FORMAT = "matsim-checkpoint"
FORMAT_VERSION = 1
#: Units every matsim model works in (ASE's).
UNITS = {"energy": "eV", "length": "Å", "charge": "e", "mass": "amu", "stress": "eV/Å^3"}

_REQUIRED = ("format", "format_version", "model", "hyperparameters", "state_dict")


@dataclass
class Checkpoint:
    """Contents of a checkpoint file.

    Attributes:
        model: registered model name (e.g. ``"bamboo"``).
        hyperparameters: keyword arguments that rebuild the model with ``create(model, **hyperparameters)``.
        state_dict: the model's weights.
        statistics: dataset statistics the model was built with (E0s, force RMS, mean neighbors, ...).
        metadata: free-form provenance (training config, data files, metrics, ...); JSON-like values only.
        units: units of the model's inputs and outputs.
        matsim_version: version of matsim that wrote the file.
    """

    model: str
    hyperparameters: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    statistics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    matsim_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "matsim_version": self.matsim_version,
            "model": self.model,
            "hyperparameters": self.hyperparameters,
            "state_dict": self.state_dict,
            "statistics": self.statistics,
            "metadata": self.metadata,
            "units": self.units,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path. Parent folders are created."""
    path = Path(path)
    payload = checkpoint.to_dict()
    payload["state_dict"] = {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()}
    atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; a :class:`CheckpointError` says clearly if it is missing, corrupt or incompatible."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files (KeyError, EOFError, UnpicklingError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or not a torch checkpoint") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a matsim checkpoint (no '{FORMAT}' format tag)")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if int(data["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {data['format_version']}, newer than this matsim "
            f"({__version__}) reads (≤ {FORMAT_VERSION}); upgrade matsim"
        )
    units = data.get("units", UNITS)
    if units.get("energy") != UNITS["energy"] or units.get("length") != UNITS["length"]:
        raise CheckpointError(f"checkpoint {path} uses units {units}; matsim needs eV and Å")
    return Checkpoint(
        model=str(data["model"]),
        hyperparameters=dict(data["hyperparameters"]),
        state_dict=dict(data["state_dict"]),
        statistics=dict(data.get("statistics", {})),
        metadata=dict(data.get("metadata", {})),
        units=dict(units),
        matsim_version=str(data.get("matsim_version", "unknown")),
    )
