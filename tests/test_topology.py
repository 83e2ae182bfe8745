"""Molecule integrity over a trajectory: bonds of the reference frame, minimum image, broken-bond report."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from matsim.md.analysis.topology import bond_topology, topology_changes
from matsim.md.runner import analyze_output


def two_methanes(box: float = 12.0) -> Atoms:
    """Two CH4 (mol_id 0, 1) in a periodic cubic box; the second straddles the boundary at x = 0."""
    first, second = molecule("CH4"), molecule("CH4")
    first.translate([6.0, 6.0, 6.0])
    second.translate([0.2, 3.0, 3.0])
    atoms = first + second
    atoms.set_cell([box] * 3)
    atoms.pbc = True
    atoms.wrap()  # the second molecule's atoms now sit on both faces of the box
    atoms.arrays["mol_id"] = np.repeat([0, 1], 5)
    return atoms


def test_bonds_are_found_within_molecules_across_the_boundary() -> None:
    bonds = bond_topology(two_methanes())
    assert len(bonds.i) == 8  # four C-H per methane, none between molecules, none H-H
    assert sorted(set(zip(bonds.i.tolist(), bonds.j.tolist()))) == [(0, k) for k in range(1, 5)] + \
        [(5, k) for k in range(6, 10)]


def test_vibrations_and_wrapping_keep_molecules_intact() -> None:
    reference = two_methanes()
    frames = []
    for seed in range(3):
        frame = reference.copy()
        frame.rattle(0.08, seed=seed)
        frame.translate([5.9, 0.0, 0.0])  # whole molecules cross the boundary
        frame.wrap()
        frames.append(frame)
    report = topology_changes(frames, reference, np.array(["CH4", "CH4"]), frame_interval_fs=10.0)
    assert report.intact and report.warning() is None and report.molecules == {"CH4": 2}


def test_a_lost_atom_is_reported_with_its_time_species_and_bond() -> None:
    reference = two_methanes()
    frames = [reference.copy() for _ in range(4)]
    for frame in frames[2:]:
        frame.positions[7] += [0.0, 3.0, 0.0]  # an H leaves the second methane from the third frame on
    report = topology_changes(frames, reference, np.array(["CH4", "CH4"]), frame_interval_fs=10.0)
    assert not report.intact
    assert report.first_broken_fs == pytest.approx(20.0)
    assert report.broken == {"CH4": 1} and report.broken_bond_types == ["C-H"]
    assert "1 of 2 CH4" in report.warning() and "0.02 ps" in report.warning()


def test_analysis_of_a_run_directory_reports_broken_molecules(tmp_path: Path) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    from matsim.md.config import MDConfig

    reference = two_methanes()
    ase.io.write(tmp_path / "initial.extxyz", reference, format="extxyz")
    frames = []
    rng = np.random.default_rng(0)
    for k in range(40):
        frame = reference.copy()
        frame.rattle(0.02, seed=k)
        if k >= 25:
            frame.positions[2] += [2.5, 0.0, 0.0]
        frame.set_momenta(rng.normal(scale=0.3, size=(len(frame), 3)))
        frame.info.update(stage="nvt", step=k, time_fs=float(k))
        frame.calc = SinglePointCalculator(frame, energy=0.0, forces=np.zeros((len(frame), 3)))
        frames.append(frame)
    ase.io.write(tmp_path / "trajectory.extxyz", frames, format="extxyz")
    config = MDConfig.model_validate(dict(
        structure=str(tmp_path / "initial.extxyz"), model="tiny.pt", device="cpu",
        stages=[dict(kind="nvt", steps=40, temperature_K=300.0)],
        output=dict(trajectory_every=1, progress=False), analysis=dict(n_blocks=2, include=["density"])))
    summary = analyze_output(tmp_path, config)
    assert summary["topology"]["intact"] is False and summary["topology"]["first_broken_fs"] == 25.0
    assert summary["topology"]["broken_in_last_frame"] == {"CH4": 1}
    assert "molecules broke apart" in summary["warnings"][0]
    assert json.loads((tmp_path / "analysis.json").read_text())["warnings"] == summary["warnings"]
