"""Electrolyte box builder: composition, neutrality, density, molecule bookkeeping, seeds, file reading."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from matsim.core.errors import ConfigError, StructureError
from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3
from matsim.md.builder import SystemConfig, build_box, plan_composition, read_structure, species_atoms
from matsim.md.species import IONS, SOLVENTS, get_salt, get_species

BAMBOO = Path(__file__).resolve().parents[2] / "shared" / "data" / "bamboo_benchmark_system" / "in.data"
if not BAMBOO.is_file():
    BAMBOO = Path("/work/shared/data/bamboo_benchmark_system/in.data")


def _config(**overrides) -> SystemConfig:
    data = dict(solvents=[{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}], ratio_basis="mass",
                salts=[{"name": "LiPF6", "concentration": 1.0}], n_atoms=500, seed=3)
    data.update(overrides)
    return SystemConfig(**data)


@pytest.fixture(scope="module")
def box():
    return build_box(_config())


def test_unknown_species_lists_known_names():
    with pytest.raises(ConfigError, match="known: EC, PC, DMC"):
        get_species("DMEE")
    with pytest.raises(ConfigError, match="LiPF6"):
        get_salt("LiXYZ")
    assert get_species("CCO").charge == 0 and get_species("[NH4+]").charge == 1


def test_salt_stoichiometry_is_neutral():
    salt = get_salt("Mg(TFSI)2")
    assert (salt.n_cation, salt.n_anion) == (1, 2)
    assert salt.n_cation * salt.cation.charge + salt.n_anion * salt.anion.charge == 0


@pytest.mark.parametrize("name", [*SOLVENTS, *IONS])
def test_every_library_species_has_a_sane_conformer(name):
    atoms = species_atoms(get_species(name), seed=0)
    assert atoms.arrays["formal_charge"].sum() == get_species(name).charge


def test_pf6_is_an_ideal_octahedron():
    atoms = species_atoms(get_species("PF6"))
    p = int(np.flatnonzero(atoms.numbers == 15)[0])
    d = atoms.get_distances(p, [i for i in range(7) if i != p])
    assert np.allclose(d, 1.60)
    angles = [atoms.get_angle(i, p, j) for i in range(7) for j in range(i + 1, 7) if p not in (i, j)]
    assert np.allclose(sorted(set(np.round(angles))), [90.0, 180.0])


def test_composition_matches_ratios_and_concentration():
    c = plan_composition(_config(n_atoms=None, n_molecules=100))
    counts = dict(zip([s.name for s in c.species], c.counts))
    assert counts["EC"] == 100
    # equal masses: n_DMC / n_EC = M_EC / M_DMC
    assert counts["DMC"] == round(100 * 88.062 / 90.078)
    assert counts["Li"] == counts["PF6"]
    volume_l = c.volume * 1e-27
    assert counts["Li"] / 6.02214076e23 / volume_l == pytest.approx(1.0, rel=0.05)
    molal = plan_composition(_config(n_atoms=None, n_molecules=100,
                                     salts=[{"name": "LiPF6", "concentration": 1.0, "unit": "mol/kg"}]))
    mass_kg = (100 * 88.062 + counts["DMC"] * 90.078) / 1000 / 6.02214076e23
    assert molal.counts[2] / 6.02214076e23 / mass_kg == pytest.approx(1.0, rel=0.05)


def test_molar_and_volume_ratios():
    molar = plan_composition(_config(ratio_basis="molar", n_atoms=None, n_molecules=50))
    assert molar.counts[:2] == (50, 50)
    volume = plan_composition(_config(ratio_basis="volume", n_atoms=None, n_molecules=50))
    expected = 50 * (1.063 / 90.078) / (1.321 / 88.062)
    assert volume.counts[1] == round(expected)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="exactly one of n_molecules"):
        SystemConfig(solvents=[{"name": "EC"}])
    with pytest.raises(ValueError, match="extra"):
        SystemConfig(solvents=[{"name": "EC"}], n_atoms=100, colour="red")
    with pytest.raises(ConfigError, match="no known density"):
        plan_composition(SystemConfig(solvents=[{"name": "CCO"}], n_atoms=100))
    with pytest.raises(ConfigError, match="too small"):
        plan_composition(_config(n_atoms=30))


def test_box_is_neutral_and_consistent(box):
    composition = box.info["composition"]
    assert composition["Li"] == composition["PF6"] > 0
    assert box.info["charge"] == 0 == box.arrays["formal_charge"].sum()
    assert box.pbc.all() and abs(len(box) - 500) < 30
    mol_id, charge = box.arrays["mol_id"], box.arrays["formal_charge"]
    assert mol_id.max() + 1 == sum(composition.values())
    per_molecule = np.bincount(mol_id, weights=charge)
    symbols = np.array(box.get_chemical_symbols())
    for m in range(mol_id.max() + 1):
        members = symbols[mol_id == m]
        expected = {"Li": 1, "P": -1}.get(next((s for s in members if s in ("Li", "P")), ""), 0)
        assert per_molecule[m] == expected
    assert np.all(np.diff(mol_id) >= 0)


def test_box_density_matches_target(box):
    target = plan_composition(_config()).density
    density = box.get_masses().sum() / box.get_volume() * AMU_PER_A3_TO_G_PER_CM3
    assert density == pytest.approx(target, rel=0.02)
    assert 1.2 < target < 1.35  # LP30-like electrolyte, measured about 1.3 g/cm3
    explicit = build_box(_config(density=1.10, n_atoms=200))
    assert explicit.get_masses().sum() / explicit.get_volume() * AMU_PER_A3_TO_G_PER_CM3 == pytest.approx(1.10)


def test_same_seed_same_box(box):
    again = build_box(_config())
    assert np.array_equal(box.positions, again.positions)
    other = build_box(_config(seed=4))
    assert not np.allclose(box.positions, other.positions)


def test_extxyz_round_trip(box, tmp_path):
    path = tmp_path / "box.extxyz"
    ase.io.write(path, box)
    atoms = read_structure(path)
    assert np.array_equal(atoms.arrays["mol_id"], box.arrays["mol_id"])
    assert np.array_equal(atoms.arrays["formal_charge"], box.arrays["formal_charge"])
    assert atoms.info["composition"] == box.info["composition"]


def test_molecules_found_from_bonds_when_file_has_none(box, tmp_path):
    bare = box.copy()
    del bare.arrays["mol_id"], bare.arrays["formal_charge"]
    bare.info.clear()
    path = tmp_path / "bare.xyz"
    ase.io.write(path, bare, format="extxyz")
    atoms = read_structure(path)
    assert atoms.info["composition"] == box.info["composition"]
    assert atoms.info["charge"] == 0
    assert np.array_equal(np.bincount(atoms.arrays["mol_id"]), np.bincount(box.arrays["mol_id"]))


def test_overlapping_atoms_are_rejected(box, tmp_path):
    bad = box.copy()
    bad.positions[1] = bad.positions[0] + [0.1, 0.0, 0.0]
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, bad)
    with pytest.raises(StructureError, match=r"overlapping atoms: 0 \(\w+\) and 1 \(\w+\) are 0.100 Å apart"):
        read_structure(path)


@pytest.mark.skipif(not BAMBOO.is_file(), reason="BAMBOO benchmark data file not available")
def test_lammps_data_reader_on_bamboo_system():
    atoms = read_structure(BAMBOO)
    assert len(atoms) == 4116
    assert np.allclose(atoms.cell.lengths(), 35.9208) and atoms.cell.orthorhombic
    assert atoms.info["composition"] == {"DMC": 182, "EC": 182, "Li": 14, "PF6": 14}
    assert atoms.get_chemical_formula() == "C1092H1820F84Li14O1092P14"
    assert atoms.arrays["mol_id"].max() + 1 == 392
    assert atoms.info["charge"] == 0
    charge = atoms.arrays["formal_charge"]
    symbols = np.array(atoms.get_chemical_symbols())
    assert np.all(charge[symbols == "Li"] == 1) and np.all(charge[symbols == "P"] == -1)
    assert np.count_nonzero(charge) == 28
