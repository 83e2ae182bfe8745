"""Reference methods (tblite GFN-xTB, PySCF DFT) and the resumable batch labeller, on H2O / Li / OH- only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator
from ase.io import read, write
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from matsim.cli.data import data_app
from matsim.core.errors import ConfigError, InputFileError, StructureError
from matsim.reference import SCFNotConverged, charge_and_multiplicity
from matsim.reference.dft import PySCFCalculator
from matsim.reference.labeller import ReferenceMethod, label_file
from matsim.reference.xtb import XTBCalculator

@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_library():
    """Tiny molecules gain nothing from OpenMP/BLAS threads, and on a shared machine they lose a lot."""
    with threadpool_limits(limits=1):
        yield


#: Converges within 20 GFN2 SCF iterations: the equilibrium and a rattled water.
#: Does not: water with both O-H bonds stretched three-fold (no convergence within 80 iterations either).
SCF_LIMIT = 20


def water(rattle: float = 0.0) -> Atoms:
    atoms = molecule("H2O")
    if rattle:
        atoms.rattle(rattle, seed=1)
    return atoms


def stretched_water() -> Atoms:
    atoms = molecule("H2O")
    atoms.positions[1:] = atoms.positions[0] + 3.0 * (atoms.positions[1:] - atoms.positions[0])
    return atoms


def finite_difference_forces(
    atoms: Atoms, make_calc: Callable[[], Calculator], components: list[tuple[int, int]], h: float = 1e-3
) -> np.ndarray:
    """-dE/dx by central differences for the (atom, axis) ``components``, eV/Å."""
    forces = []
    for i, k in components:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[i, k] += sign * h
            displaced.calc = make_calc()
            energies.append(displaced.get_potential_energy())
        forces.append(-(energies[0] - energies[1]) / (2 * h))
    return np.array(forces)


# ---------------------------------------------------------------- charge and multiplicity from the atoms


def test_charge_and_multiplicity_rules() -> None:
    assert charge_and_multiplicity(water()) == (0, 1)
    hydroxide = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    hydroxide.arrays["formal_charge"] = np.array([-1, 0])
    assert charge_and_multiplicity(hydroxide) == (-1, 1)
    lithium = Atoms("Li")
    assert charge_and_multiplicity(lithium) == (0, 2)
    lithium.info["charge"] = 1.0  # the float the AtomGraph round trip writes
    assert charge_and_multiplicity(lithium) == (1, 1)
    lithium.info["charge"] = 0.5
    with pytest.raises(StructureError, match="whole number"):
        charge_and_multiplicity(lithium)
    triplet_lithium = Atoms("Li", info={"multiplicity": 3})
    with pytest.raises(StructureError, match="multiplicity 3 is impossible"):
        charge_and_multiplicity(triplet_lithium)


# ---------------------------------------------------------------- GFN-xTB (tblite)


def test_xtb_forces_are_finite_differences_of_energy() -> None:
    atoms = water(rattle=0.05)
    atoms.calc = XTBCalculator("gfn2")
    components = [(0, 2), (1, 1), (2, 0)]
    analytic = np.array([atoms.get_forces()[i, k] for i, k in components])
    numeric = finite_difference_forces(atoms, XTBCalculator, components)
    np.testing.assert_allclose(analytic, numeric, atol=1e-4)


@pytest.mark.parametrize("method", ["gfn2", "gfn1"])
def test_xtb_results_units_and_shapes(method: str) -> None:
    atoms = water()  # O on +z of the two H: the dipole (from - to +) points along -z
    atoms.calc = XTBCalculator(method)
    assert atoms.calc.level_of_theory == {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB"}[method]
    assert atoms.get_forces().shape == (3, 3)
    charges = atoms.get_charges()
    assert charges.sum() == pytest.approx(0.0, abs=1e-8) and charges[0] < 0 < charges[1]
    dipole = atoms.get_dipole_moment()
    assert abs(dipole[:2]).max() < 1e-8
    assert -0.6 < dipole[2] < -0.25  # e·Å (1.2-2.9 D; experiment 1.85 D = 0.385 e·Å): neither Debye nor e·Bohr


def test_xtb_passes_the_total_charge() -> None:
    calc = XTBCalculator()
    lithium = Atoms("Li")
    lithium.calc = calc
    neutral = lithium.get_potential_energy()
    lithium.info["charge"] = 1  # same calculator, same positions: the charge change alone must trigger a new run
    cation = lithium.get_potential_energy()
    assert cation - neutral > 3.0  # GFN2's Li ionisation energy, ~9 eV
    np.testing.assert_allclose(lithium.get_charges(), [1.0], atol=1e-8)

    hydroxide = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    hydroxide.arrays["formal_charge"] = np.array([-1, 0])
    hydroxide.calc = calc
    hydroxide.get_potential_energy()
    assert hydroxide.get_charges().sum() == pytest.approx(-1.0, abs=1e-8)


def test_xtb_periodic_stress_is_the_strain_derivative() -> None:
    atoms = molecule("H2O", vacuum=2.5)
    atoms.pbc = True
    atoms.calc = XTBCalculator()
    stress = atoms.get_stress()
    h = 1e-4
    energies = []
    for sign in (1, -1):
        strained = atoms.copy()
        strain = np.eye(3)
        strain[0, 0] += sign * h
        strained.set_cell(atoms.cell @ strain, scale_atoms=True)
        strained.calc = XTBCalculator()
        energies.append(strained.get_potential_energy())
    numeric_xx = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    assert stress[0] == pytest.approx(numeric_xx, abs=2e-5)


def test_xtb_scf_failure_raises_scf_not_converged() -> None:
    atoms = stretched_water()
    atoms.calc = XTBCalculator(max_iterations=SCF_LIMIT)
    with pytest.raises(SCFNotConverged, match="did not converge in 20 iterations"):
        atoms.get_potential_energy()


def test_xtb_rejects_unknown_method() -> None:
    with pytest.raises(ConfigError, match="gfn2, gfn1"):
        XTBCalculator("gfn0")


# ---------------------------------------------------------------- DFT (PySCF)


def test_dft_forces_are_finite_differences_of_energy() -> None:
    atoms = water(rattle=0.05)
    atoms.calc = PySCFCalculator(basis="sto-3g")
    components = [(0, 2), (1, 1)]
    analytic = np.array([atoms.get_forces()[i, k] for i, k in components])
    numeric = finite_difference_forces(atoms, lambda: PySCFCalculator(basis="sto-3g"), components)
    np.testing.assert_allclose(analytic, numeric, atol=3e-3)  # no grid response in the analytic gradient


def test_dft_dipole_charges_and_level() -> None:
    atoms = water()  # O on +z of the two H: the dipole (from - to +) points along -z
    atoms.calc = PySCFCalculator(basis="sto-3g")
    assert atoms.calc.level_of_theory == "B3LYP/sto-3g"
    dipole = atoms.get_dipole_moment()
    assert abs(dipole[:2]).max() < 1e-6
    assert -0.5 < dipole[2] < -0.25  # e·Å (B3LYP/STO-3G: -0.35; experiment 1.85 D = 0.385 e·Å)
    charges = atoms.get_charges()
    assert charges.sum() == pytest.approx(0.0, abs=1e-6) and charges[0] < 0 < charges[1]
    shifted = atoms.copy()
    shifted.translate([1.0, -2.0, 0.5])
    shifted.calc = PySCFCalculator(basis="sto-3g")
    np.testing.assert_allclose(shifted.get_dipole_moment(), dipole, atol=1e-5)  # neutral: origin-independent


def test_dft_open_shell_and_charge() -> None:
    lithium = Atoms("Li")
    lithium.calc = PySCFCalculator(basis="sto-3g")
    neutral = lithium.get_potential_energy()  # doublet: unrestricted KS
    lithium.info["charge"] = 1
    assert lithium.get_potential_energy() - neutral > 3.0
    np.testing.assert_allclose(lithium.get_charges(), [1.0], atol=1e-6)


def test_dft_errors() -> None:
    with pytest.raises(ConfigError, match="dispersion"):
        PySCFCalculator(xc="b3lyp-d3bj")
    with pytest.raises(ConfigError, match="unknown exchange-correlation"):
        PySCFCalculator(xc="not-a-functional")
    box = molecule("H2O", vacuum=2.0)
    box.pbc = True
    box.calc = PySCFCalculator(basis="sto-3g")
    with pytest.raises(StructureError, match="not periodic"):
        box.get_potential_energy()
    atoms = water()
    atoms.calc = PySCFCalculator(basis="sto-3g", max_cycle=1)
    with pytest.raises(SCFNotConverged, match="did not converge in 1 cycles"):
        atoms.get_potential_energy()


# ---------------------------------------------------------------- labeller and CLI


@pytest.fixture()
def three_frames(tmp_path: Path) -> Path:
    """Frames 0 and 1 converge within SCF_LIMIT GFN2 iterations, frame 2 does not."""
    path = tmp_path / "in.xyz"
    write(path, [water(), water(rattle=0.05), stretched_water()], format="extxyz")
    return path


GFN2_LIMITED = ReferenceMethod("gfn2", max_scf_cycles=SCF_LIMIT)


def test_labeller_in_parallel_labels_and_leaves_out_failed_frames(three_frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.xyz"
    summary = label_file(three_frames, out, GFN2_LIMITED, n_workers=2)
    assert (summary.done, summary.skipped, sorted(summary.failed)) == (2, 0, [2])
    assert "did not converge" in summary.failed[2]
    frames = read(out, index=":", format="extxyz")
    assert [f.info["frame_id"] for f in frames] == [0, 1]
    for frame, original in zip(frames, [water(), water(rattle=0.05)]):
        assert frame.info["label_method"] == "gfn2" and frame.info["label_level"] == "GFN2-xTB"
        original.calc = XTBCalculator()
        assert frame.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(frame.get_forces(), original.get_forces(), atol=1e-6)
        np.testing.assert_allclose(frame.get_charges(), original.get_charges(), atol=1e-6)
        np.testing.assert_allclose(frame.get_dipole_moment(), original.get_dipole_moment(), atol=1e-6)


def test_labeller_resumes_without_recomputing(three_frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.xyz"
    label_file(three_frames, out, GFN2_LIMITED, n_workers=1)
    # Keep only frame 1, with a marker energy: as if a run had been killed after it.
    kept = read(out, index="1", format="extxyz")
    kept.calc.results["energy"] = 123.0
    write(out, kept, format="extxyz")

    summary = label_file(three_frames, out, GFN2_LIMITED, n_workers=1)
    assert (summary.done, summary.skipped, sorted(summary.failed)) == (1, 1, [2])
    frames = read(out, index=":", format="extxyz")
    assert [f.info["frame_id"] for f in frames] == [0, 1]  # re-sorted by frame_id
    assert frames[1].get_potential_energy() == 123.0  # not recomputed
    assert frames[0].get_potential_energy() < 0

    before = out.read_bytes()
    summary = label_file(three_frames, out, GFN2_LIMITED, n_workers=1)
    assert (summary.done, summary.skipped) == (0, 2)
    assert out.read_bytes() == before


def test_labeller_refuses_another_level_and_bad_input(three_frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.xyz"
    label_file(three_frames, out, GFN2_LIMITED, n_workers=1)
    with pytest.raises(ConfigError, match="GFN2-xTB"):
        label_file(three_frames, out, ReferenceMethod("gfn1"), n_workers=1)
    with pytest.raises(InputFileError, match="not found"):
        label_file(tmp_path / "missing.xyz", tmp_path / "x.xyz", GFN2_LIMITED)
    other = tmp_path / "other.xyz"
    write(other, [Atoms("Li")] * 3, format="extxyz")
    with pytest.raises(InputFileError, match="other atoms"):
        label_file(other, out, GFN2_LIMITED, n_workers=1)
    with pytest.raises(ConfigError, match="unknown reference method"):
        ReferenceMethod("ccsd")


def test_labeller_with_dft_records_the_level(tmp_path: Path) -> None:
    source = tmp_path / "in.xyz"
    write(source, water(), format="extxyz")
    out = tmp_path / "out.xyz"
    summary = label_file(source, out, ReferenceMethod("dft", basis="sto-3g"), n_workers=1)
    assert summary.done == 1
    frame = read(out, format="extxyz")
    assert (frame.info["label_method"], frame.info["label_level"]) == ("dft", "B3LYP/sto-3g")
    assert frame.get_forces().shape == (3, 3)


def test_labeller_records_stress_of_periodic_frames(tmp_path: Path) -> None:
    box = molecule("H2O", vacuum=2.5)
    box.pbc = True
    box.info["charge"] = 0
    source = tmp_path / "in.xyz"
    write(source, box, format="extxyz")
    label_file(source, tmp_path / "out.xyz", ReferenceMethod("gfn2"), n_workers=1)
    frame = read(tmp_path / "out.xyz", format="extxyz")
    box.calc = XTBCalculator()
    np.testing.assert_allclose(frame.get_stress(), box.get_stress(), atol=1e-8)
    assert frame.info["charge"] == 0  # input info is kept


def test_cli_label_summary_and_missing_input(three_frames: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out.xyz"
    args = ["label", str(three_frames), "--method", "gfn2", "-o", str(out), "--workers", "1", "--max-scf-cycles", "20"]
    result = runner.invoke(data_app, args)
    assert result.exit_code == 0, result.output
    assert "labelled 2, skipped 0 (already done), failed 1" in result.output
    assert "frame 2 left out" in result.output
    result = runner.invoke(data_app, ["label", str(tmp_path / "missing.xyz"), "--method", "gfn2", "-o", str(out)])
    assert isinstance(result.exception, InputFileError)
