"""AtomGraph: construction from ASE / pymatgen, batching round trips, edges, dtypes and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from pymatgen.core import Lattice, Molecule, Structure

from matsim import AtomGraph
from matsim.core.errors import StructureError
from matsim.core.validation import check_atoms


def mixed_systems() -> list[Atoms]:
    water = molecule("H2O")
    water.info["charge"] = 0.0
    slab = bulk("Cu", "fcc", 3.6, cubic=True) * (1, 1, 2)
    slab.pbc = (True, True, False)
    salt = bulk("NaCl", "rocksalt", 5.64)
    salt.arrays["mol_id"] = np.arange(len(salt))
    ion = Atoms("Li", positions=[[0, 0, 0]])
    ion.info["charge"] = 1.0
    return [water, slab, salt, ion]


def test_batch_round_trip_preserves_every_field() -> None:
    systems = mixed_systems()
    graph = AtomGraph.build(systems, cutoff=3.0, dtype=torch.float64)
    assert graph.num_systems == 4
    assert graph.atoms_per_system().tolist() == [len(a) for a in systems]
    assert graph.charge.tolist() == [0.0, 0.0, 0.0, 1.0]
    back = graph.to_atoms()
    for original, restored in zip(systems, back):
        assert (original.numbers == restored.numbers).all()
        np.testing.assert_allclose(original.positions, restored.positions)
        np.testing.assert_allclose(original.cell.array, restored.cell.array)
        assert (original.pbc == restored.pbc).all()
    assert (back[2].arrays["mol_id"] == systems[2].arrays["mol_id"]).all()
    assert "mol_id" not in back[0].arrays


def test_batched_edges_equal_one_by_one() -> None:
    systems = mixed_systems()
    batch = AtomGraph.build(systems, cutoff=3.2, dtype=torch.float64)
    singles = [AtomGraph.build(a, cutoff=3.2, dtype=torch.float64) for a in systems]
    offset, expected = 0, set()
    for g in singles:
        for (i, j), s in zip(g.edge_index.T.tolist(), g.shifts.long().tolist()):
            expected.add((i + offset, j + offset, *s))
        offset += g.num_nodes
    got = {(i, j, *s) for (i, j), s in zip(batch.edge_index.T.tolist(), batch.shifts.long().tolist())}
    assert got == expected
    assert (batch.edge_vectors().norm(dim=1) < 3.2).all()
    # edges never cross systems
    sys_of = batch.system_index()
    assert (sys_of[batch.edge_index[0]] == sys_of[batch.edge_index[1]]).all()


def test_collating_graphs_with_edges_offsets_indices() -> None:
    singles = [AtomGraph.build(a, cutoff=3.0) for a in mixed_systems()]
    batch = AtomGraph.collate(singles)
    rebuilt = AtomGraph.build(mixed_systems(), cutoff=3.0)
    assert torch.equal(batch.edge_index, rebuilt.edge_index)
    assert isinstance(batch, AtomGraph)


def test_pymatgen_structure_and_molecule() -> None:
    structure = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], charge=0)
    mol = Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], charge=-1, spin_multiplicity=2)
    graph = AtomGraph.build([structure, mol], cutoff=4.0)
    assert graph.charge.tolist() == [0.0, -1.0]
    assert graph.pbc.tolist() == [[True] * 3, [False] * 3]
    assert graph.numbers.tolist() == [12, 8, 8, 1, 1]


def test_edge_vectors_carry_gradients_to_positions() -> None:
    graph = AtomGraph.build(bulk("Si", "diamond", 5.43), cutoff=3.0, dtype=torch.float64)
    graph.pos.requires_grad_(True)
    graph.edge_vectors().norm(dim=1).sum().backward()
    assert graph.pos.grad is not None and torch.isfinite(graph.pos.grad).all()


def test_to_dtype_changes_floats_only() -> None:
    graph = AtomGraph.build(mixed_systems(), cutoff=3.0, dtype=torch.float32).to_dtype(torch.float64)
    assert graph.pos.dtype == graph.cell.dtype == graph.shifts.dtype == torch.float64
    assert graph.numbers.dtype == graph.edge_index.dtype == torch.long


def test_formal_charges_give_the_total_charge() -> None:
    atoms = molecule("CH4")
    atoms.arrays["formal_charge"] = np.array([1, 0, 0, 0, 0])
    assert AtomGraph.build(atoms).charge.item() == 1.0


def test_unknown_element_is_a_clear_error() -> None:
    atoms = Atoms(numbers=[0, 1], positions=[[0, 0, 0], [1, 0, 0]])
    with pytest.raises(StructureError, match="unknown element"):
        AtomGraph.build(atoms)


def test_overlapping_atoms_are_named() -> None:
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.1, 0, 0], [0.0, 0.96, 0]])
    with pytest.raises(StructureError, match=r"overlapping atoms: 0 \(O\) and 1 \(H\) are 0.100 Å apart"):
        check_atoms(atoms)
    check_atoms(molecule("H2O"))


def test_overlap_through_a_periodic_image_is_found() -> None:
    atoms = Atoms("H2", positions=[[0.1, 0, 0], [2.9, 0, 0]], cell=[3.0, 5.0, 5.0], pbc=True)
    with pytest.raises(StructureError, match="periodic images"):
        check_atoms(atoms)


def test_unsupported_element_for_a_model() -> None:
    with pytest.raises(StructureError, match="element\\(s\\) O not supported"):
        check_atoms(molecule("H2O"), allowed_numbers={1, 6})
