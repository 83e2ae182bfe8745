"""UniMat's unified crystal representation (Yang et al., "Scalable Diffusion for Materials Generation", ICLR 2024).

A crystal becomes a dense tensor indexed by the periodic table: every element owns a cell of a
``ROWS`` × ``COLUMNS`` = 9 × 18 grid and ``L`` slots (``slots``: the most atoms of one element in any crystal of
the data), each slot holding one atom's fractional coordinates:

=============== ======================== =====================================================================
``frac_coords`` (B, 9, 18, L, 3) float   fractional coordinates in [0, 1) of occupied slots; 0 in empty ones
``occupancy``   (B, 9, 18, L) bool       which slots hold an atom (the empty-slot marker)
``lengths``     (B, 3)                   a, b, c in Å
``angles``      (B, 3)                   α, β, γ in degrees
=============== ======================== =====================================================================

**Grid layout.** Rows 0-6 are periods 1-7 and columns 0-17 groups 1-18, as in the printed table. The f-block sits
in two extra rows, again as printed: lanthanides La-Lu in row 7 and actinides Ac-Lr in row 8, columns 2-16 (so
the group-3 cells of periods 6 and 7 stay empty, as do the other cells no element owns). Every element 1-118 has
a cell (:func:`grid_cell`).

**Empty slots** are marked by the separate ``occupancy`` channel (UniMat marks them with null coordinates; an
explicit channel lets a composition condition fix the occupancy outright while the coordinates are generated).

**Canonical order.** An element with k atoms fills its first k slots, sorted lexicographically by (x, y, z)
fractional coordinates; the representation is therefore invariant to permutations of the atoms. It is not
invariant to the choice of the cell origin: UniMat trains on the raw representation, and so do we, with a random
origin shift as data augmentation (:func:`to_grid` with ``shift``; the order is re-sorted after the shift). The
lattice is given by its parameters, so rotations of the cell do not change the representation; the cell itself is
the dataset's canonical (Niggli-reduced) one.

Structure → grid → Structure is exact (float64 coordinates, lattice parameters): :func:`structures_to_grid` and
:func:`grid_to_structures`. A crystal with more than ``L`` atoms of an element does not fit and is a
:class:`~matsim.core.errors.StructureError` naming the element.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pymatgen.core import Element, Structure

from matsim.core.errors import StructureError
from matsim.datasets.crystals import CrystalBatch, CrystalDataset, structure_from_arrays

__all__ = ["ROWS", "COLUMNS", "UniMatGrid", "grid_cell", "cell_elements", "max_atoms_per_element", "to_grid",
           "structures_to_grid", "grid_to_structures", "composition_occupancy"]

ROWS, COLUMNS = 9, 18
MAX_Z = 118


def grid_cell(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` (1-118) in the 9 × 18 grid (see the module docstring)."""
    if not 1 <= z <= MAX_Z:
        raise StructureError(f"atomic number {z} has no place in the periodic table (1-{MAX_Z})")
    if z <= 2:
        return 0, 0 if z == 1 else 17
    for period, (first, last) in enumerate(((3, 10), (11, 18)), start=1):  # s block + p block
        if first <= z <= last:
            offset = z - first
            return period, offset if offset < 2 else offset + 10
    for period, first in ((3, 19), (4, 37)):
        if z < first + 18:
            return period, z - first
    for period, first, f_start, f_row in ((5, 55, 57, 7), (6, 87, 89, 8)):
        if z < first + 32:
            if z < f_start:
                return period, z - first
            if z < f_start + 15:
                return f_row, z - f_start + 2
            return period, z - f_start - 15 + 3
    raise AssertionError(z)  # unreachable: every z in 1..118 is placed above


def cell_elements() -> torch.Tensor:
    """(9, 18) long: the atomic number owning each cell, 0 for cells no element owns."""
    table = torch.zeros(ROWS, COLUMNS, dtype=torch.long)
    for z in range(1, MAX_Z + 1):
        table[grid_cell(z)] = z
    return table


def _cell_index() -> torch.Tensor:
    """(119,) long: flat cell index (row·18 + column) of each atomic number (entry 0 unused, -1)."""
    index = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
    for z in range(1, MAX_Z + 1):
        row, column = grid_cell(z)
        index[z] = row * COLUMNS + column
    return index


_CELL_INDEX = _cell_index()


@dataclass
class UniMatGrid:
    """A batch of crystals in the unified representation (fields and shapes as in the module docstring)."""

    frac_coords: torch.Tensor
    occupancy: torch.Tensor
    lengths: torch.Tensor
    angles: torch.Tensor

    @property
    def num_systems(self) -> int:
        return int(self.lengths.shape[0])


def max_atoms_per_element(dataset: CrystalDataset) -> int:
    """The most atoms of one element in any crystal of ``dataset`` (the ``L`` it needs)."""
    if not len(dataset):
        return 0
    batch = dataset.batch(range(len(dataset)))
    key = batch.batch * (MAX_Z + 1) + batch.atom_types
    return int(torch.unique(key, return_counts=True)[1].max())


def to_grid(batch: CrystalBatch, slots: int, shift: torch.Tensor | None = None,
            wrap_tolerance: float = 0.0) -> UniMatGrid:
    """The unified representation of ``batch`` with ``slots`` slots per element, on the batch's device and dtype.

    ``shift`` (B, 3), optional: fractional origin shift added to every atom of each crystal before wrapping into
    [0, 1) and sorting (the training augmentation). ``wrap_tolerance``: coordinates ≥ 1 - ``wrap_tolerance`` become
    0, the same position, so that a site on a cell face sorts the same whether the data store it as 0 or 0.9999
    (0 keeps coordinates exactly). Raises :class:`StructureError` when a crystal has more than ``slots`` atoms of
    one element.
    """
    frac = batch.frac_coords
    if shift is not None:
        frac = frac + shift[batch.batch]
    frac = torch.remainder(frac, 1.0)
    # remainder(-tiny, 1) rounds to 1.0
    frac = torch.where(frac >= 1.0 - wrap_tolerance, torch.zeros_like(frac), frac)
    cells = _CELL_INDEX.to(frac.device)[batch.atom_types]
    if bool((cells < 0).any()):
        raise StructureError(f"atomic numbers must be 1-{MAX_Z}, got {sorted(set(batch.atom_types.tolist()))}")
    # canonical order: crystal, then cell, then x, y, z (stable sorts from the last key to the first)
    order = torch.arange(frac.shape[0], device=frac.device)
    for key in (frac[:, 2], frac[:, 1], frac[:, 0], cells, batch.batch):
        order = order[torch.sort(key[order], stable=True).indices]
    group = batch.batch[order] * (ROWS * COLUMNS) + cells[order]
    _, counts = torch.unique_consecutive(group, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(order.shape[0], device=frac.device) - starts
    if bool((rank >= slots).any()):
        largest = int(torch.argmax(counts))
        atom = order[int(counts[:largest].sum())]
        element = Element.from_Z(int(batch.atom_types[atom])).symbol
        raise StructureError(f"crystal {int(batch.batch[atom])} has {int(counts[largest])} {element} atoms; the "
                             f"representation has {slots} slots per element")
    num = batch.num_systems
    flat = (group * slots + rank)
    coords = frac.new_zeros(num * ROWS * COLUMNS * slots, 3).index_copy_(0, flat, frac[order])
    occupancy = torch.zeros(num * ROWS * COLUMNS * slots, dtype=torch.bool, device=frac.device)
    occupancy[flat] = True
    return UniMatGrid(frac_coords=coords.reshape(num, ROWS, COLUMNS, slots, 3),
                      occupancy=occupancy.reshape(num, ROWS, COLUMNS, slots),
                      lengths=batch.lengths, angles=batch.angles)


def structures_to_grid(structures: Sequence[Structure], slots: int) -> UniMatGrid:
    """The unified representation (float64) of pymatgen structures as they are (cell and origin kept)."""
    dataset = CrystalDataset.from_structures(structures, niggli=False)
    return to_grid(dataset.batch(range(len(dataset)), dtype=torch.float64), slots)


def grid_to_structures(grid: UniMatGrid) -> list[Structure | None]:
    """pymatgen Structures of a grid batch (``None`` where no slot is occupied or the lattice is not valid)."""
    elements = cell_elements().reshape(1, ROWS, COLUMNS, 1).expand(grid.occupancy.shape).to(grid.occupancy.device)
    out = []
    for b in range(grid.num_systems):
        occupied = grid.occupancy[b]
        out.append(structure_from_arrays(
            grid.frac_coords[b][occupied].detach().double().cpu().numpy(),
            elements[b][occupied].cpu().numpy(),
            grid.lengths[b].detach().double().cpu().numpy(),
            grid.angles[b].detach().double().cpu().numpy(),
        ))
    return out


def composition_occupancy(counts: dict[int, int], slots: int) -> torch.Tensor:
    """(9, 18, ``slots``) bool occupancy of a composition ``{atomic number: count}``: each element's first slots.
    Raises :class:`StructureError` when a count exceeds ``slots``."""
    occupancy = torch.zeros(ROWS, COLUMNS, slots, dtype=torch.bool)
    for z, count in counts.items():
        if count > slots:
            raise StructureError(f"{count} {Element.from_Z(z).symbol} atoms do not fit: the representation has "
                                 f"{slots} slots per element")
        occupancy[grid_cell(z)][:count] = True
    return occupancy

