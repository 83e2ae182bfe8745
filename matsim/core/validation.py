"""Checks on user-supplied structures, raising :class:`StructureError` with a message that names the problem."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from matsim.core.errors import StructureError
from matsim.core.neighbors import neighbor_list

__all__ = ["check_atoms", "MIN_DISTANCE"]

#: Default smallest allowed interatomic distance, Å (closer atoms are treated as overlapping).
MIN_DISTANCE = 0.5


def check_atoms(atoms: Atoms, min_distance: float = MIN_DISTANCE, allowed_numbers: set[int] | None = None) -> None:
    """Raise :class:`StructureError` for an empty system, unknown or unsupported elements, non-finite positions,
    a degenerate periodic cell, or two atoms closer than ``min_distance`` Å (periodic images included)."""
    if len(atoms) == 0:
        raise StructureError("the structure has no atoms")
    numbers = np.asarray(atoms.numbers)
    if (numbers < 1).any() or (numbers > 118).any():
        raise StructureError(f"unknown element with atomic number {int(numbers[(numbers < 1) | (numbers > 118)][0])}")
    if allowed_numbers is not None:
        unsupported = sorted(set(numbers.tolist()) - set(allowed_numbers))
        if unsupported:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in unsupported)
            known = ", ".join(chemical_symbols[z] for z in sorted(allowed_numbers))
            raise StructureError(f"element(s) {names} not supported by this model (it knows {known})")
    if not np.isfinite(atoms.positions).all():
        raise StructureError("the structure has non-finite (NaN or inf) positions")
    positions = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell = torch.as_tensor(np.asarray(atoms.cell.array), dtype=torch.float64)
    edge_index, shifts = neighbor_list(positions, cell, torch.as_tensor(atoms.pbc), min_distance)
    if edge_index.shape[1]:
        i, j = edge_index[:, 0].tolist()
        vector = positions[j] - positions[i] + shifts[0] @ cell
        symbols = atoms.get_chemical_symbols()
        where = "" if not shifts[0].any() else " (periodic images)"
        raise StructureError(
            f"overlapping atoms: {i} ({symbols[i]}) and {j} ({symbols[j]}) are {float(vector.norm()):.3f} Å apart"
            f"{where}; the minimum is {min_distance} Å"
        )
