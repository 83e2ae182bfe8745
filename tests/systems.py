"""Shared test systems."""

from __future__ import annotations

import numpy as np
from ase import Atoms


def random_cell(rng: np.random.Generator, lengths: tuple[float, float, float], noise: float, n: int,
                min_distance: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A triclinic cell diag(lengths) + N(0, noise) (Å) and n random positions no closer than ``min_distance``
    (minimum image). Draws from ``rng`` in a fixed order, so a seed always gives the same system."""
    cell = np.diag(lengths) + rng.normal(scale=noise, size=(3, 3))
    positions: list[np.ndarray] = []
    while len(positions) < n:
        trial = rng.random(3) @ cell
        atoms = Atoms("H" * (len(positions) + 1), positions=positions + [trial], cell=cell, pbc=True)
        if not positions or atoms.get_distances(len(positions), range(len(positions)), mic=True).min() > min_distance:
            positions.append(trial)
    return cell, positions
