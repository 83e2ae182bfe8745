"""Rigid-body displacement scans: molecules move rigidly by the requested distance, along the centre-of-mass line."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from matsim.datasets.displacements import displace_molecule, displacement_scans


def _dimer() -> Atoms:
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    atoms = Atoms("OH2OH2", positions=np.vstack([water, water + [0.3, 0.2, 2.9]]))
    atoms.arrays["mol_id"] = np.array([0, 0, 0, 1, 1, 1])
    atoms.info["source"] = "box/frame0/mol0"
    return atoms


def _com(atoms: Atoms, mol: np.ndarray) -> np.ndarray:
    return atoms.get_masses()[mol] @ atoms.positions[mol] / atoms.get_masses()[mol].sum()


@pytest.mark.parametrize("shift", [-0.3, 0.5, 1.7])
def test_the_molecule_moves_rigidly_by_the_shift_along_the_centre_line(shift: float) -> None:
    dimer = _dimer()
    moved = displace_molecule(dimer, 1, shift)
    mol = dimer.arrays["mol_id"] == 1
    before = np.linalg.norm(_com(dimer, mol) - _com(dimer, ~mol))
    after = np.linalg.norm(_com(moved, mol) - _com(moved, ~mol))
    assert after - before == pytest.approx(shift, abs=1e-12)
    assert np.allclose(moved.positions[~mol], dimer.positions[~mol])
    inner = lambda a: np.linalg.norm(a.positions[mol][:, None] - a.positions[mol][None], axis=-1)  # noqa: E731
    assert np.allclose(inner(moved), inner(dimer))


def test_scans_drop_overlaps_record_their_origin_and_skip_single_molecules() -> None:
    dimer = _dimer()
    single = dimer[dimer.arrays["mol_id"] == 0]
    frames = displacement_scans([dimer, single], shifts=(-2.5, 0.5, 1.0), min_distance=1.3, seed=0)
    assert [f.info["scan_shift"] for f in frames] == [0.5, 1.0]  # -2.5 Å would overlap the molecules
    assert all(f.info["scan_of"] == "box/frame0/mol0" and f.calc is None for f in frames)
    with pytest.raises(ValueError):
        displace_molecule(single, 0, 0.5)


def test_scale_box_keeps_molecules_rigid_across_the_boundary_and_scales_their_centres() -> None:
    from ase.geometry import find_mic

    from matsim.datasets.displacements import scale_box

    dimer = _dimer()
    dimer.set_cell([6.0, 6.0, 6.0])
    dimer.pbc = True
    dimer.positions -= [0.5, 0.0, 0.0]  # molecule 0 now straddles the x boundary once wrapped
    dimer.wrap()
    scaled = scale_box(dimer, 1.1)
    assert np.allclose(scaled.cell.lengths(), [6.6, 6.6, 6.6])
    for m in (0, 1):
        idx = np.flatnonzero(dimer.arrays["mol_id"] == m)
        before, _ = find_mic(dimer.positions[idx] - dimer.positions[idx[0]], dimer.cell, pbc=True)
        after = scaled.positions[idx] - scaled.positions[idx[0]]
        assert np.allclose(after, before)  # whole and rigid (no minimum image needed after scaling)
    com = lambda a, m: _com(a, a.arrays["mol_id"] == m)  # noqa: E731
    shift_before, _ = find_mic(com(dimer, 1) - com(dimer, 0), dimer.cell, pbc=True)
    shift_after, _ = find_mic(com(scaled, 1) - com(scaled, 0), scaled.cell, pbc=True)
    assert np.allclose(shift_after, 1.1 * shift_before)


def _chain(n_atoms: int = 7, box: float = 10.0) -> Atoms:
    """One zig-zag carbon chain (C–C 1.45 Å) longer than half of its cubic ``box``, wrapped across the boundary."""
    x = 1.25 * np.arange(n_atoms)
    positions = np.stack([x - 3.0, 0.7 * (np.arange(n_atoms) % 2), np.full(n_atoms, 5.0)], axis=1)
    chain = Atoms(f"C{n_atoms}", positions=positions, cell=[box] * 3, pbc=True)
    chain.arrays["mol_id"] = np.zeros(n_atoms, dtype=int)
    chain.wrap()
    return chain


def test_a_molecule_longer_than_half_the_box_is_made_whole_by_its_bonds_and_scaled_rigidly() -> None:
    from matsim.datasets.displacements import molecules_intact, scale_box, whole_molecules

    chain = _chain()
    whole = whole_molecules(chain)
    bonds = np.linalg.norm(np.diff(whole, axis=0), axis=1)
    assert np.allclose(bonds, np.hypot(1.25, 0.7))  # every bond at its real length: one piece
    assert np.ptp(whole[:, 0]) > 0.5 * chain.cell[0, 0]
    for factor in (0.92, 1.08):
        scaled = scale_box(chain, factor)
        assert molecules_intact(scaled)
        inside = scaled.positions - scaled.positions[0]
        assert np.allclose(inside, whole - whole[0])  # rigid: the shape is unchanged


def test_molecules_intact_flags_a_torn_molecule() -> None:
    from matsim.datasets.displacements import molecules_intact

    chain = _chain()
    assert molecules_intact(chain)
    torn = chain.copy()
    torn.positions[3:] += [0.0, 0.0, 2.0]  # the chain cut between atoms 2 and 3
    assert not molecules_intact(torn)
    folded = chain.copy()
    folded.positions[4] = folded.positions[0] + [0.3, 0.0, 0.0]  # still bonded, but onto atom 0
    assert not molecules_intact(folded)
