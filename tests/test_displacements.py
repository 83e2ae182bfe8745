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
