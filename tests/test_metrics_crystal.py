"""Crystal metrics on hand-built cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matsim.core.errors import ConfigError, InputFileError
from matsim.metrics import crystal
from matsim.metrics.crystal import (
    composition_validity,
    dedup_matcher,
    distinct_mask,
    evaluate_crystals,
    fingerprints,
    match_rate_and_rmse,
    novel_mask,
    read_csv_structures,
    read_structures,
    structure_validity,
)


def rocksalt(a: float = 5.64, species: tuple[str, str] = ("Na", "Cl")) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl() -> Structure:
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def cscl_nacl() -> Structure:
    return Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # NaCl in the CsCl type


def overlapping() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å apart


def nacl2() -> Structure:
    return Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])


# --- validity ---------------------------------------------------------------------------------------------------


def test_structure_validity_known_cases():
    assert structure_validity(rocksalt())
    assert not structure_validity(overlapping())
    assert not structure_validity(None)
    # an atom 0.3 Å from its own periodic image
    assert not structure_validity(Structure(Lattice.orthorhombic(0.3, 5, 5), ["C"], [[0, 0, 0]]))
    # volume below 0.1 Å^3
    assert not structure_validity(Structure(Lattice.orthorhombic(0.6, 0.6, 0.2), ["C"], [[0, 0, 0]]))


@pytest.mark.parametrize(
    ("formula", "valid"),
    [
        ("NaCl", True),
        ("NaCl2", False),
        ("SrTiO3", True),
        ("C", True),  # single element
        ("CuZn", True),  # all-metal alloy
        ("Fe3O4", False),  # needs mixed valence, which CDVAE's test does not allow
        ("AlCaO3", True),  # valid only with the pinned smact14 set (SMACT 4's default says False)
        ("RbTlO3", False),  # invalid only with the pinned smact14 set (SMACT 4's default says True)
    ],
)
def test_composition_validity_golden(formula, valid):
    assert crystal.SMACT_OXIDATION_STATE_SET == "smact14"
    assert composition_validity(Composition(formula)) is valid


def test_composition_validity_of_nothing_is_false():
    assert not composition_validity(None)


# --- uniqueness, novelty, matching ------------------------------------------------------------------------------


def test_duplicates_and_failed_samples_lower_uniqueness():
    samples = [rocksalt(), rocksalt(5.70), None, cscl()]  # a 1 % larger copy is the same structure (scaled)
    assert distinct_mask(samples) == [True, False, False, True]


def test_novelty_against_training():
    assert novel_mask([rocksalt(), cscl(), None], training=[rocksalt(5.5), perovskite()]) == [False, True, False]


def test_novelty_reduces_cells_once_with_the_matchers_verdicts():
    """Pre-reduced cells give the verdicts of ``StructureMatcher.fit`` on the raw structures (supercells,
    translated and distorted copies, another structure type of the same formula)."""
    rng = np.random.default_rng(0)
    shifted = rocksalt()
    shifted.translate_sites(list(range(len(shifted))), [0.13, 0.02, 0.4])
    samples = [rocksalt().make_supercell([2, 1, 1], in_place=False), shifted, cscl_nacl(), None]
    for amplitude in (0.05, 0.3, 0.6):
        distorted = rocksalt()
        distorted.perturb(amplitude, min_distance=amplitude)
        distorted.lattice = Lattice(distorted.lattice.matrix @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))))
        samples.append(distorted)
    training = [rocksalt(5.5).get_primitive_structure(), perovskite()]
    matcher = dedup_matcher()
    expected = [s is not None and not any(matcher.fit(s, t) for t in training if t.composition.reduced_formula
                                          == s.composition.reduced_formula) for s in samples]
    assert novel_mask(samples, training) == expected
    assert expected[:4] == [False, False, True, False] and True in expected[4:]


def test_match_rate_and_rmse():
    truth = [rocksalt(), perovskite(), cscl()]
    shaken = perovskite()
    shaken.perturb(0.05, min_distance=0.05)
    predictions = [rocksalt(), shaken, rocksalt(species=("K", "Br"))]
    rate, rmse = match_rate_and_rmse(predictions, truth, valid=[True, True, True])
    assert rate == pytest.approx(2 / 3)
    assert 0.0 < rmse < 0.05
    rate, _ = match_rate_and_rmse(predictions, truth, valid=[False, True, True])  # invalid never matches
    assert rate == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        match_rate_and_rmse(predictions, truth[:2], valid=[True] * 3)


# --- whole evaluation -------------------------------------------------------------------------------------------


def test_evaluate_counts_failed_samples_in_every_denominator():
    samples = [rocksalt(), rocksalt(), overlapping(), None, nacl2()]
    m = evaluate_crystals(samples, training=[cscl()])
    assert m.n == 5
    assert m.struct_validity == pytest.approx(3 / 5)  # overlapping and None fail
    assert m.comp_validity == pytest.approx(3 / 5)  # None and NaCl2 fail
    assert m.validity == pytest.approx(2 / 5)
    assert m.n_valid == 2
    assert m.uniqueness == pytest.approx(3 / 5)  # rocksalt, overlapping, NaCl2
    assert m.uniqueness_valid == pytest.approx(1 / 2)
    assert m.novelty == pytest.approx(4 / 5)
    assert m.cov_r is None and m.emd_density is None and m.match_rate is None
    assert [f.valid for f in m.samples] == [True, True, False, False, False]


def test_coverage_of_a_set_against_itself_is_one_and_emd_zero():
    structures = [rocksalt(), perovskite(), cscl()]
    m = evaluate_crystals(structures, reference=structures, training=structures, dataset="mp_20")
    assert m.cov_r == 1.0 and m.cov_p == 1.0
    assert m.emd_density == pytest.approx(0.0, abs=1e-12)
    assert m.emd_n_elements == pytest.approx(0.0, abs=1e-12)
    assert m.novelty == 0.0
    assert m.thresholds["coverage_cutoffs"] == {"struct": 0.4, "comp": 10.0, "dataset": "mp_20"}
    data = json.loads(json.dumps(m.to_dict()))
    assert data["versions"]["SMACT"] and "samples" not in data


def test_coverage_precision_denominator_includes_failed_samples():
    structures = [rocksalt(), perovskite()]
    m = evaluate_crystals([*structures, None, None], reference=structures, dataset="perov_5")
    assert m.cov_r == 1.0
    assert m.cov_p == pytest.approx(0.5)


def test_fingerprints_in_worker_processes_equal_the_serial_ones():
    structures = [rocksalt(), None, perovskite(), cscl(), rocksalt(6.0, species=("K", "Br"))]
    serial, parallel = fingerprints(structures), fingerprints(structures, workers=2)
    assert serial.struct.shape == (4, 61) and serial.comp.shape == (4, 132)
    assert np.array_equal(serial.struct, parallel.struct)
    assert np.array_equal(serial.comp, parallel.comp, equal_nan=True)


def test_emd_of_shifted_densities():
    small, large = rocksalt(5.64), rocksalt(5.64 * 1.1)
    m = evaluate_crystals([large], reference=[small])
    assert m.emd_density == pytest.approx(small.density - large.density)
    assert m.emd_n_elements == 0.0


def test_cutoff_constants_cite_cdvae():
    assert {k: (v.struct, v.comp) for k, v in crystal.COVERAGE_CUTOFFS.items()} == {
        "mp_20": (0.4, 10.0), "carbon_24": (0.2, 4.0), "perov_5": (0.2, 4.0)
    }


def test_bad_inputs_raise_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        evaluate_crystals([rocksalt()], reference=[rocksalt()], dataset="mp20")
    with pytest.raises(ConfigError):
        evaluate_crystals([])
    with pytest.raises(InputFileError, match="not found"):
        read_structures([tmp_path / "missing.cif"])
    (tmp_path / "x.pdb").write_text("")
    with pytest.raises(InputFileError, match="unsupported"):
        read_structures([tmp_path / "x.pdb"])


# --- readers ----------------------------------------------------------------------------------------------------


def test_readers_cif_extxyz_csv_and_broken_samples(tmp_path):
    rocksalt().to(filename=str(tmp_path / "a.cif"))
    (tmp_path / "b.cif").write_text("data_broken\n_cell_length_a nonsense\n")
    write(tmp_path / "c.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in (perovskite(), cscl())])
    structures = read_structures([tmp_path])
    assert [None if s is None else s.composition.reduced_formula for s in structures] == [
        "NaCl", None, "SrTiO3", "CsCl"
    ]
    csv_path = tmp_path / "set.csv"
    cif = perovskite().to(fmt="cif").replace('"', '""')
    csv_path.write_text(f'material_id,cif\nm1,"{cif}"\nm2,"not a cif"\n')
    rows = read_csv_structures(csv_path)
    assert rows[0] is not None and len(rows[0]) == 5 and rows[1] is None
    assert np.allclose(rows[0].lattice.abc, (3.9, 3.9, 3.9))
    with pytest.raises(InputFileError, match="no 'structure' column"):
        read_csv_structures(csv_path, column="structure")
