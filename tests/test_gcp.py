"""Geometrical counterpoise correction (gCP through s-dftd3): derivatives, physics, label correction, command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from matsim.cli.app import main
from matsim.core.errors import ConfigError

pytest.importorskip("dftd3")

from matsim.reference.gcp import GCPCalculator, add_gcp_to_labels, gcp_basis_name, gcp_level  # noqa: E402


def water_dimer(distance: float) -> Atoms:
    """Two waters whose oxygens are ``distance`` Å apart along x."""
    first, second = molecule("H2O"), molecule("H2O")
    second.translate([distance, 0.0, 0.0])
    return first + second


def gcp_energy(atoms: Atoms, **options) -> float:
    probe = atoms.copy()
    probe.calc = GCPCalculator(**options)
    return probe.get_potential_energy()


def test_forces_and_stress_are_derivatives_of_the_energy() -> None:
    atoms = molecule("CH3CH2OH") + water_dimer(2.9)[3:]
    atoms.rattle(0.05, seed=1)
    atoms.calc = GCPCalculator(scale=0.64)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    atoms.set_cell([7.0, 7.5, 8.0])
    atoms.center()
    atoms.pbc = True
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7)


def test_interaction_is_repulsive_decays_and_scales() -> None:
    def interaction(distance: float, scale: float = 1.0) -> float:
        dimer = water_dimer(distance)
        return gcp_energy(dimer, scale=scale) - gcp_energy(dimer[:3], scale=scale) - gcp_energy(dimer[3:], scale=scale)

    near, far = interaction(2.9), interaction(12.0)
    assert near > 1e-3  # eV: a counterpoise correction removes spurious binding
    assert abs(far) < 1e-3 * near
    assert interaction(2.9, scale=0.5) == pytest.approx(0.5 * near, rel=1e-12)


def test_names_and_unparametrised_choices() -> None:
    assert gcp_basis_name("def2-SVP") == "svp"
    assert gcp_level("b3lyp", "def2-SVP") == "B3LYP-gCP/def2-SVP"
    assert gcp_level("b3lyp", "def2-SVP", 0.64) == "B3LYP-gCP(0.64)/def2-SVP"
    with pytest.raises(ConfigError, match="def2-QZVP"):
        GCPCalculator(basis="def2-QZVP")
    with pytest.raises(ConfigError, match="no gCP parameters for nosuchfunctional"):
        GCPCalculator(xc="nosuchfunctional")
    with pytest.raises(ConfigError, match="scale"):
        GCPCalculator(scale=-1.0)


def labelled(atoms: Atoms, level: str = "B3LYP/def2-SVP") -> Atoms:
    rng = np.random.default_rng(0)
    out = atoms.copy()
    out.info["label_level"] = level
    out.calc = SinglePointCalculator(out, energy=-10.0, forces=rng.normal(size=(len(out), 3)),
                                     charges=rng.normal(size=len(out)), dipole=np.array([0.1, 0.2, 0.3]))
    return out


def test_labels_gain_the_correction_and_keep_everything_else() -> None:
    frame = labelled(water_dimer(3.0))
    (corrected,) = add_gcp_to_labels([frame], "b3lyp", "def2-SVP", scale=0.64)
    reference = frame.copy()
    reference.calc = GCPCalculator(scale=0.64)
    assert corrected.get_potential_energy() == pytest.approx(-10.0 + reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(corrected.get_forces(), frame.get_forces() + reference.get_forces(), atol=1e-12)
    np.testing.assert_array_equal(corrected.get_charges(), frame.get_charges())
    np.testing.assert_array_equal(corrected.get_dipole_moment(), frame.get_dipole_moment())
    assert corrected.info["label_level"] == "B3LYP-gCP(0.64)/def2-SVP"
    assert frame.info["label_level"] == "B3LYP/def2-SVP"  # the input is not modified
    with pytest.raises(ConfigError, match="already gCP-corrected"):
        add_gcp_to_labels([corrected], "b3lyp", "def2-SVP")
    with pytest.raises(ConfigError, match="frame 1 has no reference energy"):
        add_gcp_to_labels([frame, water_dimer(3.0)], "b3lyp", "def2-SVP")


def test_command_writes_corrected_file_and_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "labels.extxyz"
    write(source, [labelled(water_dimer(3.0)), labelled(water_dimer(3.5))], format="extxyz")
    output = tmp_path / "gcp.extxyz"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "gcp", str(source), "--scale", "0.64", "-o", str(output)])
    assert int(exit_info.value.code or 0) == 0
    frames = read(output, ":")
    assert [f.info["label_level"] for f in frames] == ["B3LYP-gCP(0.64)/def2-SVP"] * 2
    assert frames[0].get_potential_energy() > frames[1].get_potential_energy() > -10.0  # closer pair, more repulsion
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "gcp", str(source), "--basis", "def2-QZVP", "-o", str(tmp_path / "bad.extxyz")])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "bad.extxyz").exists()
