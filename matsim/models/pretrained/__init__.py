"""Pretrained models shipped inside the package, loadable offline by name.

Each model is ``<name>.pt`` (a matsim checkpoint) with an optional model card ``<name>.md`` beside it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED_DIR", "available", "path_of"]

PRETRAINED_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the pretrained models shipped with this installation, sorted."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def path_of(name: str) -> Path | None:
    """Checkpoint path of the shipped model ``name``, or None if there is none."""
    path = PRETRAINED_DIR / f"{name}.pt"
    return path if path.is_file() else None
