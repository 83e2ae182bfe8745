"""AtomGraph: atoms, cell and neighbor edges of one or many systems, as torch tensors.

An :class:`AtomGraph` is a :class:`torch_geometric.data.Data`, so PyG's ``Batch.from_data_list`` and ``DataLoader``
batch it (edge indices are offset, per-system fields stacked). Fields and shapes (N atoms, B systems, E edges):

============== ============ =================================================================
``pos``        (N, 3) float Cartesian positions, Å
``numbers``    (N,) int64   atomic numbers
``cell``       (B, 3, 3)    cell vectors as rows, Å (zeros for a molecule)
``pbc``        (B, 3) bool  periodicity along each cell vector
``charge``     (B,) float   total charge of each system, e
``molecule_id``(N,) int64   molecule index within its system, -1 where unknown
``edge_index`` (2, E) int64 centre ``i`` = row 0, neighbor ``j`` = row 1 (global atom indices)
``shifts``     (E, 3) float integer cell shifts S: r_ij = pos[j] - pos[i] + S @ cell[system of i]
``batch``      (N,) int64   system index of each atom (set by batching; :meth:`system_index` always works)
============== ============ =================================================================

Build from ``ase.Atoms``, pymatgen ``Structure``/``Molecule`` or lists of them with :meth:`AtomGraph.build`; convert
back with :meth:`AtomGraph.to_atoms`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch, Data

from matsim.core.errors import StructureError
from matsim.core.neighbors import batched_neighbor_list

__all__ = ["AtomGraph", "to_ase_atoms", "total_charge", "MOLECULE_ID_KEYS"]

#: Per-atom array names read as molecule ids, in order of preference (``molID`` is used by the MACE tutorials' data).
MOLECULE_ID_KEYS: tuple[str, ...] = ("mol_id", "molecule_id", "molID")

_MAX_Z = 118


class AtomGraph(Data):
    """Atoms, cells and (optionally) edges of one system or a batch of systems. See the module docstring."""

    @classmethod
    def build(
        cls,
        systems: Any,
        cutoff: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "AtomGraph":
        """Graph of one system or a batch of systems, with edges within ``cutoff`` Å when given.

        Args:
            systems: an ``ase.Atoms``, pymatgen ``Structure``/``Molecule``, or a sequence of them (batched).
            cutoff: neighbor cutoff in Å; ``None`` builds no edges.
            dtype: float dtype of positions/cell/charges (default: torch's default dtype).
            device: where the tensors live (neighbor lists run there too).
        """
        if isinstance(systems, (list, tuple)):
            graphs = [cls.from_atoms(to_ase_atoms(s), None, dtype, device) for s in systems]
            if not graphs:
                raise StructureError("no systems to build a graph from")
            batch = cls.collate(graphs)
            return batch.with_edges(cutoff) if cutoff is not None else batch
        return cls.from_atoms(to_ase_atoms(systems), cutoff, dtype, device)

    @classmethod
    def from_atoms(
        cls,
        atoms: Atoms,
        cutoff: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "AtomGraph":
        """Graph of one ``ase.Atoms``. Total charge: ``atoms.info["charge"]``, else the sum of a per-atom
        ``formal_charge`` array, else 0. Molecule ids: the first of :data:`MOLECULE_ID_KEYS` present."""
        dtype = dtype or torch.get_default_dtype()
        numbers = np.asarray(atoms.numbers)
        if numbers.size and (numbers.min() < 1 or numbers.max() > _MAX_Z):
            bad = int(numbers[(numbers < 1) | (numbers > _MAX_Z)][0])
            raise StructureError(f"unknown element with atomic number {bad}")
        n = len(atoms)
        pbc = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool), device=device).reshape(1, 3)
        cell = torch.as_tensor(np.asarray(atoms.cell.array), dtype=dtype, device=device).reshape(1, 3, 3)
        mol_key = next((k for k in MOLECULE_ID_KEYS if k in atoms.arrays), None)
        molecule_id = atoms.arrays[mol_key] if mol_key else np.full(n, -1)
        graph = cls(
            pos=torch.as_tensor(atoms.positions, dtype=dtype, device=device),
            numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
            cell=cell,
            pbc=pbc,
            charge=torch.tensor([total_charge(atoms)], dtype=dtype, device=device),
            molecule_id=torch.as_tensor(np.asarray(molecule_id, dtype=np.int64), device=device),
            num_nodes=n,
        )
        return graph.with_edges(cutoff) if cutoff is not None else graph

    @staticmethod
    def collate(graphs: Sequence["AtomGraph"]) -> "AtomGraph":
        """Batch graphs into one (edge indices offset; per-system fields stacked); PyG's Batch does the work."""
        return Batch.from_data_list(list(graphs))

    def with_edges(self, cutoff: float) -> "AtomGraph":
        """This graph with ``edge_index``/``shifts`` of all pairs within ``cutoff`` Å (computed on its device)."""
        edge_index, shifts = batched_neighbor_list(self.pos, self.cell, self.pbc, self.ptr_offsets(), cutoff)
        self.edge_index, self.shifts = edge_index, shifts
        return self

    @property
    def num_systems(self) -> int:
        """Number of systems B."""
        return int(self.cell.shape[0])

    def system_index(self) -> torch.Tensor:
        """(N,) int64 system of each atom (zeros for a single system)."""
        batch = getattr(self, "batch", None)
        if batch is not None:
            return batch
        return torch.zeros(self.num_nodes, dtype=torch.long, device=self.pos.device)

    def ptr_offsets(self) -> torch.Tensor:
        """(B + 1,) offsets: system ``b`` holds atoms ``ptr[b]:ptr[b+1]``."""
        ptr = getattr(self, "ptr", None)
        if ptr is not None:
            return ptr
        return torch.tensor([0, self.num_nodes], device=self.pos.device)

    def atoms_per_system(self) -> torch.Tensor:
        """(B,) number of atoms in each system."""
        return self.ptr_offsets().diff()

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) vectors r_ij = pos[j] - pos[i] + S @ cell, Å; differentiable with respect to ``pos``."""
        i, j = self.edge_index
        return self.pos[j] - self.pos[i] + self.edge_offsets()

    def edge_offsets(self) -> torch.Tensor:
        """(E, 3) Cartesian image offsets S @ cell of each edge, Å (detached from the cell)."""
        cell_of_edge = self.cell.detach()[self.system_index()[self.edge_index[0]]]
        return torch.einsum("ek,ekl->el", self.shifts, cell_of_edge)

    def to_dtype(self, dtype: torch.dtype) -> "AtomGraph":
        """A copy with every floating-point field in ``dtype`` (integer fields untouched)."""
        out = self.clone()
        for key, value in out.items():
            if torch.is_tensor(value) and value.is_floating_point():
                out[key] = value.to(dtype)
        return out

    def to_atoms(self) -> Atoms | list[Atoms]:
        """Back to ``ase.Atoms`` (a list for a batch of several systems); charge and molecule ids preserved."""
        ptr = self.ptr_offsets().tolist()
        pos = self.pos.detach().cpu().numpy()
        numbers = self.numbers.cpu().numpy()
        mol = self.molecule_id.cpu().numpy()
        out = []
        for b in range(self.num_systems):
            s = slice(ptr[b], ptr[b + 1])
            atoms = Atoms(
                numbers=numbers[s],
                positions=pos[s],
                cell=self.cell[b].detach().cpu().numpy(),
                pbc=self.pbc[b].cpu().numpy(),
            )
            atoms.info["charge"] = float(self.charge[b])
            if (mol[s] >= 0).any():
                atoms.arrays["mol_id"] = mol[s].copy()
            out.append(atoms)
        is_batch = getattr(self, "ptr", None) is not None
        return out if is_batch else out[0]


def total_charge(atoms: Atoms) -> float:
    """Total charge of ``atoms`` in e: ``info["charge"]``, else Σ ``formal_charge`` (per atom), else 0."""
    if "charge" in atoms.info:
        return float(atoms.info["charge"])
    if "formal_charge" in atoms.arrays:
        return float(np.sum(atoms.arrays["formal_charge"]))
    return 0.0


def to_ase_atoms(system: Any) -> Atoms:
    """An ``ase.Atoms`` from ``ase.Atoms`` or pymatgen ``Structure``/``Molecule`` (charge kept in ``info``)."""
    if isinstance(system, Atoms):
        return system
    try:
        from pymatgen.core import Molecule, Structure
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError as exc:  # pragma: no cover - pymatgen is a dependency
        raise StructureError(f"cannot convert {type(system).__name__}: pymatgen is not importable") from exc
    if isinstance(system, (Structure, Molecule)):
        atoms = AseAtomsAdaptor.get_atoms(system)
        atoms.info["charge"] = float(system.charge)
        return atoms
    raise StructureError(f"cannot build an atom graph from {type(system).__name__}; give ase.Atoms or pymatgen objects")
