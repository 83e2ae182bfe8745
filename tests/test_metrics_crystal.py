"""Crystal metrics on hand-built cases with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import write
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matsim.core.errors import ConfigError, InputFileError
from matsim.metrics import crystal
from matsim.metrics.crystal import (
    CompositionScaler,
    composition_validity,
    composition_fingerprint,
    dedup_matcher,
    distinct_groups,
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


def test_composition_validity_is_smacts_verdict_on_random_compositions():
    """The pruned search gives the verdict of SMACT's full enumeration (``smact_validity``, same set)."""
    from smact.screening import smact_validity

    rng = np.random.default_rng(0)
    pool = ("H Li Be B C N O F Na Mg Al Si P S Cl K Ca Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Sr Y Zr Nb Mo "
            "Ag Cd In Sn Sb Te I Cs Ba La Ce Hf Ta W Pt Au Hg Pb Bi U He Ar Xe Eu").split()
    compositions = [
        Composition({str(e): int(rng.integers(1, 9)) for e in rng.choice(pool, rng.integers(2, 5), replace=False)})
        for _ in range(300)
    ]
    expected = [bool(smact_validity(c, True, True, oxidation_states_set="smact14")) for c in compositions]
    assert [composition_validity(c) for c in compositions] == expected
    assert 0.2 < np.mean(expected) < 0.8  # both verdicts are exercised


def test_composition_validity_of_nothing_is_false():
    assert not composition_validity(None)


# --- uniqueness, novelty, matching ------------------------------------------------------------------------------


def test_duplicates_and_failed_samples_lower_uniqueness():
    samples = [rocksalt(), rocksalt(5.70), None, cscl()]  # a 1 % larger copy is the same structure (scaled)
    assert distinct_mask(samples) == [True, False, False, True]


def strained(structure: Structure, rng: np.random.Generator, size: float) -> Structure:
    """A copy with its lattice strained by a random matrix of entries ~ size and its sites shaken by size/5 Å."""
    copy = structure.copy()
    copy.lattice = Lattice(copy.lattice.matrix @ (np.eye(3) + size * rng.standard_normal((3, 3))))
    copy.perturb(size / 5)
    return copy


def test_distinct_groups_are_pymatgens_groups():
    """Skipping pairs that cannot match leaves ``StructureMatcher.group_structures``' greedy groups unchanged."""
    rng = np.random.default_rng(1)
    bases = [rocksalt(), rocksalt().make_supercell([1, 1, 2], in_place=False), cscl_nacl(), perovskite()]
    samples = [strained(bases[int(rng.integers(4))], rng, float(rng.uniform(0.0, 0.15))) for _ in range(40)]
    matcher = dedup_matcher()
    position = {id(s): i for i, s in enumerate(samples)}
    expected: list[int | None] = [None] * len(samples)
    for group in matcher.group_structures(samples):
        for s in group:
            expected[position[id(s)]] = min(position[id(t)] for t in group)
    assert distinct_groups([*samples, None]) == [*expected, None]
    assert 4 < len(set(expected)) < 35  # duplicates and distinct structures both occur


def test_may_match_never_rules_out_a_match():
    """``_ReducedCell.may_match`` is False only for pairs the matcher rejects (lattice strains around ltol)."""
    rng = np.random.default_rng(2)
    matcher = dedup_matcher()
    ruled_out = matched = 0
    for _ in range(100):
        base = perovskite() if rng.random() < 0.5 else rocksalt()
        a, b = (crystal._ReducedCell.of(strained(base, rng, float(rng.uniform(0.0, 0.2)))) for _ in range(2))
        fit = matcher.fit(a.structure, b.structure, skip_structure_reduction=True)
        matched += fit
        if not a.may_match(b):
            ruled_out += 1
            assert not fit
    assert ruled_out > 5 and matched > 5


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


def test_shipped_composition_scaler_is_the_mp20_statistics():
    """Coverage standardises with the MP-20 statistics (as CDVAE), refitted here from the files it names."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20_subset"
    if not data.is_dir():
        pytest.skip("shared MP-20 data not available")
    rows = [composition_fingerprint(s.composition) for name in ("opryan90_train_subset.csv", "opryan90_val_subset.csv")
            for s in read_csv_structures(data / name) if s is not None]
    refit, shipped = CompositionScaler.fit(np.asarray(rows)), CompositionScaler.load()
    assert len(rows) == 970
    assert np.allclose(refit.means, shipped.means) and np.allclose(refit.stds, shipped.stds)
    m = evaluate_crystals([perovskite()], reference=[perovskite()], dataset="perov_5")
    assert m.thresholds["comp_scaler"].startswith("MP-20")


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
