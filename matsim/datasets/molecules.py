"""Molecules with their spectra as padded tensors, for generative models of structure from spectra (DiffSpectra).

A molecule is its heavy atoms only (hydrogens implicit, as in the SMILES): atomic numbers, formal charges, the
bond type of every pair (:data:`BOND_TYPES`: none, single, double, triple, aromatic, from rdkit's perception of the
SMILES, aromaticity included) and 3D positions (Å) of the heavy atoms of the stored optimised conformer, centred
on their mean. The conformer of ``SPECTRA.h5`` (:mod:`matsim.reference.spectra`) is rdkit's ``AddHs`` of the parsed
SMILES, so its first atoms are the SMILES's heavy atoms in SMILES order, hydrogens after them; the reader checks
that the elements agree.

:func:`molecule_from_graph` is the way back: a sanitised rdkit ``Mol`` (hydrogens implicit, one conformer of the
heavy atoms) or ``None`` when the graph is not a valid molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, rdBase
from rdkit.Geometry import Point3D

from matsim.core.errors import ConfigError, InputFileError
from matsim.datasets.spectra import parse_smiles, read_spectra
from matsim.datasets.structures import read_structures

__all__ = ["BOND_TYPES", "MoleculeGraph", "MoleculeBatch", "MoleculeSpectraDataset", "molecule_graph",
           "molecule_from_graph"]

#: Bond classes of a pair of atoms (index = class); class 0: no bond.
BOND_TYPES: tuple[Chem.BondType | None, ...] = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE,
                                                Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
_BOND_CLASS = {bond: i for i, bond in enumerate(BOND_TYPES) if bond is not None}
#: Aromatic nitrogens given an explicit H, one more per try, when a decoded graph fails to kekulise ([nH]).
_MAX_NH_FIXES = 2


@dataclass(frozen=True)
class MoleculeGraph:
    """One molecule's heavy atoms: ``numbers`` (N,), ``charges`` (N,) formal charges, ``bonds`` (N, N) symmetric
    bond classes (:data:`BOND_TYPES`), ``positions`` (N, 3) Å centred on their mean."""

    numbers: np.ndarray
    charges: np.ndarray
    bonds: np.ndarray
    positions: np.ndarray


def molecule_graph(smiles: str, atomic_numbers: np.ndarray, positions: np.ndarray) -> MoleculeGraph:
    """The heavy-atom graph of ``smiles`` with the positions (Å) of its conformer's first atoms (conformer atoms
    ``atomic_numbers`` (A,), ``positions`` (A, 3); heavy atoms first, as ``Chem.AddHs`` orders them).

    Raises :class:`InputFileError` when the conformer's heavy atoms are not the SMILES's atoms in order.
    """
    mol = parse_smiles(smiles)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    n = len(numbers)
    if len(atomic_numbers) < n or not np.array_equal(np.asarray(atomic_numbers[:n]), numbers):
        raise InputFileError(f"the conformer of {smiles!r} does not start with the SMILES's heavy atoms")
    bonds = np.zeros((n, n), dtype=np.int64)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if bond.GetBondType() not in _BOND_CLASS:
            raise InputFileError(f"{smiles!r}: bond type {bond.GetBondType()} is not one of single, double, "
                                 "triple, aromatic")
        bonds[i, j] = bonds[j, i] = _BOND_CLASS[bond.GetBondType()]
    heavy = np.asarray(positions[:n], dtype=np.float64)
    return MoleculeGraph(numbers=numbers, charges=np.array([a.GetFormalCharge() for a in mol.GetAtoms()]),
                         bonds=bonds, positions=heavy - heavy.mean(axis=0))


def molecule_from_graph(numbers: Sequence[int], charges: Sequence[int], bonds: np.ndarray,
                        positions: np.ndarray | None = None) -> Chem.Mol | None:
    """A sanitised rdkit molecule (implicit hydrogens; a conformer of the heavy atoms when ``positions`` (N, 3) Å are
    given) of a heavy-atom graph, or ``None`` when rdkit rejects it (valence, kekulisation) or it is disconnected.

    Aromatic nitrogens that cannot be kekulised without a hydrogen (pyrrole-type ``[nH]``, implicit in the graph)
    get one explicit H, up to :data:`_MAX_NH_FIXES` of them."""
    n = len(numbers)
    if n == 0:
        return None
    mol = Chem.RWMol()
    for z, q in zip(numbers, charges):
        atom = Chem.Atom(int(z))
        atom.SetFormalCharge(int(q))
        mol.AddAtom(atom)
    for i in range(n):
        for j in range(i + 1, n):
            if bonds[i, j]:
                mol.AddBond(i, j, BOND_TYPES[int(bonds[i, j])])
                if BOND_TYPES[int(bonds[i, j])] == Chem.BondType.AROMATIC:
                    for k in (i, j):
                        mol.GetAtomWithIdx(k).SetIsAromatic(True)
    if positions is not None:
        conformer = Chem.Conformer(n)
        for i, (x, y, z) in enumerate(np.asarray(positions, dtype=float)):
            conformer.SetAtomPosition(i, Point3D(x, y, z))
        mol.AddConformer(conformer, assignId=True)
    candidates = [a.GetIdx() for a in mol.GetAtoms() if a.GetIsAromatic() and a.GetAtomicNum() == 7]
    for fixes in range(_MAX_NH_FIXES + 1):
        trial = Chem.Mol(mol)
        for idx in candidates[:fixes]:
            trial.GetAtomWithIdx(idx).SetNumExplicitHs(1)
        with rdBase.BlockLogs():
            try:
                Chem.SanitizeMol(trial)
            except Exception:  # rdkit raises several types (valence, kekulisation, ring perception)
                if fixes >= len(candidates):
                    return None
                continue
        return trial if len(Chem.GetMolFrags(trial)) == 1 else None
    return None


@dataclass
class MoleculeBatch:
    """Molecules padded to the largest of the batch (B molecules, N atoms, M modalities, G grid points).

    ``numbers`` (B, N) int64 atomic numbers, 0 in padding; ``charges`` (B, N) int64 formal charges; ``bonds``
    (B, N, N) int64 bond classes; ``positions`` (B, N, 3) Å, centred per molecule, 0 in padding; ``mask`` (B, N)
    bool real atoms; ``spectra`` (B, M, G) float32, each normalised to maximum 1 (zeros for a molecule without one);
    ``has_spectrum`` (B,) bool.
    """

    numbers: torch.Tensor
    charges: torch.Tensor
    bonds: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    spectra: torch.Tensor
    has_spectrum: torch.Tensor

    @property
    def num_systems(self) -> int:
        return int(self.numbers.shape[0])

    def to(self, device: torch.device | str) -> "MoleculeBatch":
        return MoleculeBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class MoleculeSpectraDataset:
    """Molecules (:class:`MoleculeGraph`), most or all of them with an IR spectrum: those of a ``SPECTRA.h5`` file,
    optionally joined by molecules without one (a ``STRUCTURES.h5`` file, :meth:`from_structures`), which train a
    generator's structure prior only.

    Args:
        graphs: one heavy-atom graph per molecule (n).
        spectra: (S, G) float32 IR spectra (max 1) of the molecules that have one.
        grid: (G,) cm⁻¹.
        smiles, ids: per molecule.
        spectrum_rows: (n,) row of ``spectra`` of each molecule, -1 for none; default: molecule i has row i.
    """

    def __init__(self, graphs: list[MoleculeGraph], spectra: np.ndarray, grid: np.ndarray, smiles: list[str],
                 ids: list[str], spectrum_rows: np.ndarray | None = None) -> None:
        self.graphs, self.spectra, self.grid, self.smiles, self.ids = graphs, spectra, grid, smiles, ids
        self.spectrum_rows = np.arange(len(graphs)) if spectrum_rows is None else np.asarray(spectrum_rows)
        if len(self.spectrum_rows) != len(graphs) or self.spectrum_rows.max(initial=-1) >= len(spectra):
            raise ValueError(f"spectrum_rows must give each of the {len(graphs)} molecules a row of the "
                             f"{len(spectra)} spectra or -1")

    @classmethod
    def from_file(cls, path: str | Path, max_rows: int | None = None) -> "MoleculeSpectraDataset":
        """The molecules of ``path`` (the first ``max_rows`` if given); :class:`InputFileError` if no spectra file."""
        data = read_spectra(path)
        rows = range(len(data) if max_rows is None else min(max_rows, len(data)))
        graphs = []
        for i in rows:
            try:
                graphs.append(molecule_graph(data.smiles[i], *data.molecule(i)))
            except InputFileError as exc:
                raise InputFileError(f"{path}, molecule {data.ids[i]}: {exc}") from None
        if not graphs:
            raise InputFileError(f"{path}: no molecules")
        return cls(graphs, np.asarray(data.ir[: len(graphs)], dtype=np.float32), np.asarray(data.grid),
                   data.smiles[: len(graphs)], data.ids[: len(graphs)])

    @classmethod
    def from_structures(cls, path: str | Path, grid: np.ndarray, exclude: set[str] = frozenset(),
                        max_rows: int | None = None) -> "MoleculeSpectraDataset":
        """The molecules of a structures file (:mod:`matsim.datasets.structures`), none with a spectrum, leaving out
        every compound whose :func:`~matsim.datasets.spectra.molecule_key` (stored in the file) is in ``exclude``
        (e.g. the validation and test molecules of the spectra); ``grid`` (G,) cm⁻¹ is the spectra's, for joining
        them (:meth:`concatenate`)."""
        data = read_structures(path)
        graphs, smiles, ids = [], [], []
        for i in range(len(data) if max_rows is None else min(max_rows, len(data))):
            if data.keys[i] in exclude:
                continue
            try:
                graphs.append(molecule_graph(data.smiles[i], *data.molecule(i)))
            except InputFileError as exc:
                raise InputFileError(f"{path}, molecule {data.ids[i]}: {exc}") from None
            smiles.append(data.smiles[i])
            ids.append(data.ids[i])
        if not graphs:
            raise InputFileError(f"{path}: no molecules (after leaving out {len(exclude)} held-out compounds)")
        return cls(graphs, np.zeros((0, len(grid)), np.float32), np.asarray(grid), smiles, ids,
                   np.full(len(graphs), -1))

    @classmethod
    def concatenate(cls, parts: Sequence["MoleculeSpectraDataset"]) -> "MoleculeSpectraDataset":
        """One dataset of the molecules of ``parts`` in order (their spectra on one grid)."""
        grid = parts[0].grid
        if any(len(p.grid) != len(grid) or not np.allclose(p.grid, grid) for p in parts):
            raise ConfigError("the spectra of the joined datasets are on different grids")
        offsets = np.cumsum([0] + [len(p.spectra) for p in parts])
        rows = [np.where(p.spectrum_rows >= 0, p.spectrum_rows + offset, -1) for p, offset in zip(parts, offsets)]
        return cls([g for p in parts for g in p.graphs], np.concatenate([p.spectra for p in parts]), grid,
                   [s for p in parts for s in p.smiles], [i for p in parts for i in p.ids], np.concatenate(rows))

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def has_spectrum(self) -> np.ndarray:
        """(n,) bool: which molecules have a spectrum."""
        return self.spectrum_rows >= 0

    def spectrum(self, i: int) -> np.ndarray | None:
        """Molecule ``i``'s spectrum (G,), or None."""
        return None if self.spectrum_rows[i] < 0 else self.spectra[self.spectrum_rows[i]]

    def select(self, indices: Sequence[int]) -> "MoleculeSpectraDataset":
        """The molecules at ``indices``, in that order (their spectra copied, in the same order)."""
        indices = list(indices)
        rows = self.spectrum_rows[indices]
        with_spectrum = rows >= 0
        new_rows = np.full(len(indices), -1)
        new_rows[with_spectrum] = np.arange(int(with_spectrum.sum()))
        return MoleculeSpectraDataset([self.graphs[i] for i in indices], self.spectra[rows[with_spectrum]], self.grid,
                                      [self.smiles[i] for i in indices], [self.ids[i] for i in indices], new_rows)

    def batch(self, indices: Sequence[int]) -> MoleculeBatch:
        """The molecules at ``indices`` as one padded batch."""
        graphs = [self.graphs[i] for i in indices]
        b, n = len(graphs), max(len(g.numbers) for g in graphs)
        numbers = torch.zeros(b, n, dtype=torch.long)
        charges = torch.zeros(b, n, dtype=torch.long)
        bonds = torch.zeros(b, n, n, dtype=torch.long)
        positions = torch.zeros(b, n, 3)
        for row, g in enumerate(graphs):
            k = len(g.numbers)
            numbers[row, :k] = torch.from_numpy(g.numbers)
            charges[row, :k] = torch.from_numpy(g.charges)
            bonds[row, :k, :k] = torch.from_numpy(g.bonds)
            positions[row, :k] = torch.from_numpy(g.positions)
        rows = self.spectrum_rows[list(indices)]
        has = rows >= 0
        spectra = torch.zeros(b, 1, self.spectra.shape[1])
        spectra[torch.from_numpy(has), 0] = torch.from_numpy(self.spectra[rows[has]])
        return MoleculeBatch(numbers, charges, bonds, positions, numbers > 0, spectra, torch.from_numpy(has))
