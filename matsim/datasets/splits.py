"""Train/validation splits: explicit index lists, or seeded random fractions or counts; saved with each run.

A random split permutes ``range(n)`` with ``numpy.random.default_rng(seed)``, takes the validation frames first and
the training frames next, so the same seed and sizes give the same split on every machine and NumPy version that
keeps the PCG64 stream (NumPy guarantees it). The split a run used is written to ``split.json`` in the run
folder and read back on ``--resume``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from matsim.core.errors import ConfigError, InputFileError

__all__ = ["Split", "random_split", "explicit_split", "save_split", "load_split"]


@dataclass(frozen=True)
class Split:
    """Frame indices of the training and validation sets (into one data file)."""

    train: list[int]
    valid: list[int]
    num_frames: int
    seed: int | None = None

    def to_dict(self) -> dict:
        return {"num_frames": self.num_frames, "seed": self.seed, "train": list(self.train), "valid": list(self.valid)}


def _count(value: float | int | None, n: int, name: str) -> int | None:
    """A frame count from a fraction (a float below 1) or a count (an int, or a whole float ≥ 1)."""
    if value is None:
        return None
    if value < 0:
        raise ConfigError(f"data.split.{name}: must not be negative, got {value}")
    if isinstance(value, float) and value < 1.0:
        return int(round(value * n))
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"data.split.{name}: give a fraction below 1 or a whole number of frames, got {value}")
    return int(value)


def random_split(
    num_frames: int, valid: float | int, train: float | int | None = None, seed: int = 0
) -> Split:
    """Seeded random split of ``num_frames`` frames.

    Args:
        valid: validation frames: a fraction (``0.05``) or a count (``50``).
        train: training frames (fraction or count); default: all frames not in validation.
        seed: the permutation's seed.
    """
    n_valid = _count(valid, num_frames, "valid")
    n_train = _count(train, num_frames, "train")
    if n_train is None:
        n_train = num_frames - n_valid
    if n_valid + n_train > num_frames:
        raise ConfigError(
            f"data.split: {n_train} training + {n_valid} validation frames exceed the {num_frames} frames in the file"
        )
    if n_train <= 0:
        raise ConfigError(f"data.split: no training frames left ({num_frames} frames, {n_valid} for validation)")
    order = np.random.default_rng(seed).permutation(num_frames)
    return Split(
        train=sorted(int(i) for i in order[n_valid : n_valid + n_train]),
        valid=sorted(int(i) for i in order[:n_valid]),
        num_frames=num_frames,
        seed=seed,
    )


def explicit_split(num_frames: int, train: Sequence[int], valid: Sequence[int] = ()) -> Split:
    """A split from index lists; indices must be in range and the two sets disjoint."""
    train, valid = [int(i) for i in train], [int(i) for i in valid]
    for name, indices in (("train_indices", train), ("valid_indices", valid)):
        bad = [i for i in indices if not 0 <= i < num_frames]
        if bad:
            raise ConfigError(f"data.split.{name}: index {bad[0]} is out of range (the file has {num_frames} frames)")
        if len(set(indices)) != len(indices):
            raise ConfigError(f"data.split.{name}: indices repeat")
    overlap = sorted(set(train) & set(valid))
    if overlap:
        raise ConfigError(f"data.split: frames {overlap[:5]} are in both the training and validation sets")
    return Split(train=train, valid=valid, num_frames=num_frames, seed=None)


def save_split(split: Split, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split.to_dict()) + "\n")
    return path


def load_split(path: str | Path) -> Split:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return Split(
            train=[int(i) for i in data["train"]],
            valid=[int(i) for i in data["valid"]],
            num_frames=int(data["num_frames"]),
            seed=data.get("seed"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"cannot read the split file {path}: {exc}") from exc
