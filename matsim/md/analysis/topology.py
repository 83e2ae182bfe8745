"""Did the molecules stay whole? Covalent bonds of a reference frame checked in every frame of a trajectory.

A machine-learned potential outside its training domain can break molecules without any blow-up: the electrolyte
model of ``benchmarks/electrolyte/results/density_v2_gcp.md`` took a fluoride from PF6⁻ to Li⁺ (PF5 + LiF) within a
picosecond, at normal temperature, forces and distances, so the watchdog never fired and the liquid's density and
transport described a decomposed electrolyte. This check makes such runs say so.

Bonds: pairs of atoms of the same molecule (``arrays["mol_id"]``) closer than ``bond_factor`` × the sum of their
covalent radii (ASE's ``covalent_radii``) in the reference frame (the built box, before any dynamics). A bond is
broken in a frame when its minimum-image length exceeds ``break_factor`` × the same sum (1.6: e.g. 2.6 Å for P-F,
1.7 Å for C-H, well beyond thermal vibrations at any temperature a liquid is simulated at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list

__all__ = ["BondTopology", "TopologyReport", "bond_topology", "topology_changes"]


@dataclass(frozen=True)
class BondTopology:
    """Intramolecular bonds of a reference frame: atom indices ``i``, ``j`` (B,) and covalent lengths (B,) in Å."""

    i: np.ndarray
    j: np.ndarray
    covalent: np.ndarray


@dataclass
class TopologyReport:
    """Bonds broken over a trajectory.

    Attributes:
        molecules: species -> molecules of that species.
        broken: species -> molecules with at least one broken bond in the last frame.
        first_broken_fs: time of the first frame with a broken bond (None when none broke).
        broken_bond_types: element pairs of the bonds broken in the last frame, e.g. ``["F-P"]``.
    """

    molecules: dict[str, int]
    broken: dict[str, int] = field(default_factory=dict)
    first_broken_fs: float | None = None
    broken_bond_types: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """True when every molecule kept all its bonds in every frame."""
        return self.first_broken_fs is None

    def to_dict(self) -> dict:
        return {"intact": self.intact, "molecules": self.molecules, "broken_in_last_frame": self.broken,
                "first_broken_fs": self.first_broken_fs, "broken_bond_types": self.broken_bond_types}

    def warning(self) -> str | None:
        """One sentence for the user when molecules broke, else None."""
        if self.intact:
            return None
        parts = ", ".join(f"{n} of {self.molecules[s]} {s}" for s, n in sorted(self.broken.items())) or "some"
        bonds = ", ".join(self.broken_bond_types) or "bonds that re-formed later"
        return (f"molecules broke apart during the run ({parts} in the last frame; bonds {bonds}; first at "
                f"{self.first_broken_fs / 1000:.2f} ps): the potential left the chemistry it was trained on, and "
                "structure and transport describe a decomposed liquid")


def bond_topology(reference: Atoms, bond_factor: float = 1.2) -> BondTopology:
    """The intramolecular bonds of ``reference`` (needs ``arrays["mol_id"]``), minimum image."""
    radii = covalent_radii[reference.numbers]
    i, j = neighbor_list("ij", reference, (bond_factor * radii).tolist())
    mol_id = reference.arrays["mol_id"]
    keep = (i < j) & (mol_id[i] == mol_id[j])
    i, j = i[keep], j[keep]
    return BondTopology(i, j, radii[i] + radii[j])


def topology_changes(frames: Sequence[Atoms], reference: Atoms, species: np.ndarray, frame_interval_fs: float,
                     break_factor: float = 1.6) -> TopologyReport:
    """Check the bonds of ``reference`` in every frame (same atom order).

    Args:
        frames: the trajectory; frame k is at time k × ``frame_interval_fs`` (fs) unless its ``info["time_fs"]``
            says otherwise.
        reference: the frame the bonds are taken from, with ``arrays["mol_id"]``.
        species: (M,) species name per molecule (by ``mol_id``).
        break_factor: a bond longer than this × its covalent length is broken.
    """
    bonds = bond_topology(reference)
    mol_id = reference.arrays["mol_id"]
    names, counts = np.unique(species, return_counts=True)
    report = TopologyReport(dict(zip(names.tolist(), counts.tolist())))
    broken = np.zeros(0, dtype=bool)
    for k, frame in enumerate(frames):
        vectors = frame.positions[bonds.j] - frame.positions[bonds.i]
        _, lengths = find_mic(vectors, frame.cell, frame.pbc)
        broken = lengths > break_factor * bonds.covalent
        if broken.any() and report.first_broken_fs is None:
            report.first_broken_fs = float(frame.info.get("time_fs", k * frame_interval_fs))
    if broken.any():
        molecules = np.unique(mol_id[bonds.i[broken]])
        names, counts = np.unique(species[molecules], return_counts=True)
        report.broken = dict(zip(names.tolist(), counts.tolist()))
        symbols = np.array(reference.get_chemical_symbols())
        pairs = {"-".join(sorted((symbols[a], symbols[b]))) for a, b in zip(bonds.i[broken], bonds.j[broken])}
        report.broken_bond_types = sorted(pairs)
    return report
