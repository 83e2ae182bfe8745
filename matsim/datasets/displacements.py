"""Rigid-body displacements: scans of clusters and rigid-molecule volume scaling of periodic boxes, as training data
for the intermolecular repulsive wall, the attractive tail and the liquid's equation of state.

Clusters cut from MD snapshots (:mod:`matsim.datasets.clusters`) sample intermolecular distances only around the
thermal ones, so a potential fitted to them alone is free to be too soft at short range or too sticky at long
range, and a liquid then collapses or evaporates under NPT. A scan moves one molecule of a cluster rigidly along the
line from the centre of mass of the rest of the cluster to its own centre of mass by each of a few shifts (Å;
negative = closer), keeping the others fixed: the labelled scan teaches the energy of pushing molecules together
and pulling them apart.

Input clusters carry ``arrays["mol_id"]``; every output frame is a copy with positions changed and
``info["scan_mol"]``, ``info["scan_shift"]`` (Å) and ``info["scan_of"]`` (the source cluster's ``info["source"]``)
added. A displaced geometry with two atoms of different molecules closer than ``min_distance`` is dropped.

:func:`scale_box` does the same for a periodic liquid: every molecule (``arrays["mol_id"]``), made whole across the
boundary first (:func:`whole_molecules`, by walking its bonds: a molecule longer than half the box, e.g. DEC in a
13 Å cell, cannot be made whole by taking each atom's nearest image of one atom), moves rigidly with its centre of
mass while the cell is scaled, so only intermolecular distances change (a volume scan of the liquid at fixed
molecular geometry: the reference energies and stresses of such frames put the equation of state into the fit).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = ["displace_molecule", "displacement_scans", "scale_box", "whole_molecules", "molecules_intact"]

#: Two atoms are bonded when closer than this factor times the sum of their covalent radii.
BOND_TOLERANCE = 1.25
#: Two atoms closer than this factor times the sum of their covalent radii overlap (a real bond is ~1.0).
OVERLAP_TOLERANCE = 0.7


def _centre_of_mass(atoms: Atoms, mask: np.ndarray) -> np.ndarray:
    masses = atoms.get_masses()[mask]
    return masses @ atoms.positions[mask] / masses.sum()


def displace_molecule(cluster: Atoms, mol_id: int, shift: float) -> Atoms:
    """A copy of ``cluster`` with molecule ``mol_id`` moved rigidly by ``shift`` Å away from the rest (negative:
    towards it), along the line between the two centres of mass."""
    mol = cluster.arrays["mol_id"] == mol_id
    if not mol.any() or mol.all():
        raise ValueError(f"molecule {mol_id} must be a proper part of the cluster")
    direction = _centre_of_mass(cluster, mol) - _centre_of_mass(cluster, ~mol)
    direction /= np.linalg.norm(direction)
    moved = cluster.copy()
    moved.positions[mol] += shift * direction
    return moved


def scale_box(atoms: Atoms, factor: float) -> Atoms:
    """A copy of the periodic ``atoms`` with the cell scaled by ``factor`` (lengths; volume by ``factor**3``) and
    every molecule, made whole, moved rigidly with its centre of mass (positions are not wrapped back into the cell).
    Needs ``arrays["mol_id"]`` and a full 3D cell."""
    if "mol_id" not in atoms.arrays or not atoms.pbc.all():
        raise ValueError("scale_box needs a periodic box with per-atom 'mol_id'")
    whole = whole_molecules(atoms)
    scaled = atoms.copy()
    masses = atoms.get_masses()
    for mol_id in np.unique(atoms.arrays["mol_id"]):
        members = np.flatnonzero(atoms.arrays["mol_id"] == mol_id)
        centre = masses[members] @ whole[members] / masses[members].sum()
        scaled.positions[members] = whole[members] + (factor - 1.0) * centre
    scaled.set_cell(atoms.cell * factor, scale_atoms=False)
    return scaled


def _bonds(atoms: Atoms, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-image vectors (M, M, 3) Å between the atoms ``members`` of one molecule, their bond matrix (M, M) and
    their overlap matrix (M, M: closer than ``OVERLAP_TOLERANCE`` times the covalent radii)."""
    from ase.data import covalent_radii
    from ase.geometry import find_mic

    vectors = atoms.positions[members][None, :, :] - atoms.positions[members][:, None, :]
    mic, lengths = find_mic(vectors.reshape(-1, 3), atoms.cell, pbc=atoms.pbc)
    radii = covalent_radii[atoms.numbers[members]]
    lengths = lengths.reshape(len(members), -1)
    radius_sums = radii[:, None] + radii[None, :]
    bonded = lengths < BOND_TOLERANCE * radius_sums
    overlapping = lengths < OVERLAP_TOLERANCE * radius_sums
    np.fill_diagonal(bonded, False)
    np.fill_diagonal(overlapping, False)
    return mic.reshape(len(members), len(members), 3), bonded, overlapping


def _tree_from_first_atom(bonded: np.ndarray) -> list[tuple[int, int]]:
    """(parent, child) bonds of a spanning tree grown from atom 0 over the bond matrix, in an order that places every
    parent before its children; atoms it does not reach are in no pair."""
    edges, reached, frontier = [], {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(bonded[i]):
            if int(j) not in reached:
                reached.add(int(j))
                edges.append((i, int(j)))
                frontier.append(int(j))
    return edges


def whole_molecules(atoms: Atoms) -> np.ndarray:
    """(N, 3) positions, Å, with every molecule (``arrays["mol_id"]``) made whole across periodic boundaries by
    walking its bonds from its first atom (each bond taken at its minimum image, so a molecule may be longer than
    half the cell). Atoms a molecule's bonds do not reach keep their positions."""
    positions = atoms.positions.copy()
    mol_id = atoms.arrays["mol_id"]
    for molecule in np.unique(mol_id):
        members = np.flatnonzero(mol_id == molecule)
        vectors, bonded, _ = _bonds(atoms, members)
        for i, j in _tree_from_first_atom(bonded):
            positions[members[j]] = positions[members[i]] + vectors[i, j]
    return positions


def molecules_intact(atoms: Atoms) -> bool:
    """Whether every molecule (``arrays["mol_id"]``) is one bonded piece with no two of its atoms overlapping (bonds
    and overlaps by covalent radii, minimum image). False flags a broken geometry, e.g. a molecule torn apart or
    folded onto itself by a faulty unwrapping."""
    mol_id = atoms.arrays["mol_id"]
    for molecule in np.unique(mol_id):
        members = np.flatnonzero(mol_id == molecule)
        _, bonded, overlapping = _bonds(atoms, members)
        if overlapping.any() or len(_tree_from_first_atom(bonded)) != len(members) - 1:
            return False
    return True


def _min_intermolecular_distance(atoms: Atoms, mol: np.ndarray) -> float:
    a, b = atoms.positions[mol], atoms.positions[~mol]
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def displacement_scans(clusters: list[Atoms], shifts: tuple[float, ...] = (-0.4, -0.2, 0.3, 0.8, 1.6),
                       min_distance: float = 1.3, seed: int = 0) -> list[Atoms]:
    """For each cluster of two or more molecules, one randomly chosen molecule scanned over ``shifts`` (Å).

    Returns the displaced frames (without calculator results), in input order; ``min_distance`` in Å.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for cluster in clusters:
        mol_ids = np.unique(cluster.arrays["mol_id"])
        if len(mol_ids) < 2:
            continue
        mol_id = int(rng.choice(mol_ids))
        mol = cluster.arrays["mol_id"] == mol_id
        for shift in shifts:
            moved = displace_molecule(cluster, mol_id, shift)
            if _min_intermolecular_distance(moved, mol) < min_distance:
                continue
            moved.info.update(scan_mol=mol_id, scan_shift=float(shift), scan_of=str(cluster.info.get("source", "")))
            frames.append(moved)
    return frames
