"""Spectrum-to-structure metrics on hand-built cases with known answers, and the retrieval baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matsim.metrics.spectra import (
    evaluate_elucidation,
    is_valid,
    maccs_tanimoto,
    match_key,
    mces,
    morgan_cosine,
    morgan_tanimoto,
    same_molecule,
    spectral_cosine,
    top_k_hits,
    uniqueness,
)
from matsim.models.spectra_retrieval import SpectraRetrieval


def test_tautomers_and_spellings_match_different_molecules_do_not() -> None:
    assert same_molecule("CC(=O)C", "CC(O)=C")  # keto / enol
    assert same_molecule("O=c1cccc[nH]1", "Oc1ccccn1")  # 2-pyridone / 2-hydroxypyridine
    assert same_molecule("OCC", "C(O)C")
    assert same_molecule("C[C@H](N)O", "C[C@@H](N)O")  # enantiomers: stereo ignored by default
    assert not same_molecule("C[C@H](N)O", "C[C@@H](N)O", ignore_stereo=False)
    assert not same_molecule("CCO", "COC") and not same_molecule("CCO", "CCN")
    assert not same_molecule("C1CC", "C1CC") and match_key("C1CC") is None


def test_validity_and_uniqueness() -> None:
    assert is_valid("CCO") and is_valid("c1ccccc1")
    assert not is_valid("C1CC")  # unclosed ring
    assert not is_valid("c1cccc1")  # cannot be kekulised
    assert not is_valid("CC.O")  # two fragments
    assert not is_valid("") and not is_valid("C(C)(C)(C)(C)C")  # empty; pentavalent carbon
    assert uniqueness(["CCO", "OCC", "C", "C1CC"]) == pytest.approx(2 / 3)
    assert math.isnan(uniqueness(["C1CC"]))


def test_fingerprint_similarities() -> None:
    assert morgan_tanimoto("CCO", "OCC") == 1.0 and morgan_cosine("c1ccccc1", "c1ccccc1") == pytest.approx(1.0)
    assert maccs_tanimoto("CCO", "OCC") == 1.0
    assert 0 < morgan_tanimoto("CCCO", "CCCN") < 1 and morgan_tanimoto("CCO", "C1CC") != morgan_tanimoto("CCO", "C1CC")
    assert morgan_cosine("CCCO", "CCCN") >= morgan_tanimoto("CCCO", "CCCN")  # cosine ≥ Tanimoto for bit vectors


def test_mces() -> None:
    assert mces("CCO", "OCC").distance == 0
    propanol_propylamine = mces("CCCO", "CCCN")
    assert propanol_propylamine.distance == 2 and 0 < propanol_propylamine.similarity < 1  # C-C-C common
    assert mces("c1ccccc1O", "c1ccccc1N").distance == 2
    assert mces("C1CC", "CCO") is None


def test_spectral_cosine() -> None:
    a = np.array([0.0, 1.0, 2.0, 0.0])
    assert spectral_cosine(a, 3 * a) == pytest.approx(1.0)
    assert spectral_cosine(a, np.array([1.0, 0.0, 0.0, 1.0])) == 0.0
    assert spectral_cosine(a, np.zeros(4)) == 0.0
    with pytest.raises(ValueError):
        spectral_cosine(a, np.ones(3))


def test_top_k_and_aggregate() -> None:
    assert top_k_hits("CCO", ["CCC", "C1CC", "OCC"], ks=(1, 2, 3)) == {1: False, 2: False, 3: True}
    results = [
        ("CCO", ["OCC", "CCC"]),  # hit at rank 1
        ("CC(C)=O", ["CCC", "CC(O)=C"]),  # tautomer at rank 2
        ("c1ccccc1", ["C1CC", "CCCC"]),  # miss; one invalid candidate
    ]
    metrics = evaluate_elucidation(results, ks=(1, 3))
    assert metrics.n == 3 and metrics.top_k == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    assert metrics.validity == pytest.approx(5 / 6)
    assert metrics.uniqueness == 1.0
    assert metrics.max_tanimoto == pytest.approx((1.0 + morgan_tanimoto("CC(C)=O", "CC(O)=C")
                                                  + morgan_tanimoto("c1ccccc1", "CCCC")) / 3)
    assert metrics.top1_tanimoto == pytest.approx((1.0 + morgan_tanimoto("CC(C)=O", "CCC") + 0.0) / 3)
    assert metrics.top1_mces_distance is None
    assert evaluate_elucidation(results[:1], with_mces=True).top1_mces_distance == 0.0
    assert set(metrics.to_dict()["top_k"]) == {"top_1", "top_3"}


def test_retrieval_ranks_by_cosine_and_merges_duplicates() -> None:
    grid = np.arange(5.0)
    train = np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0.1], [0, 0, 0.5, 1, 1]], dtype=float)
    retrieval = SpectraRetrieval(train, ["CCO", "CCN", "NCC", "CCC"], grid)
    ranked = retrieval.rank(np.array([[0, 2, 2, 0, 0.0], [0, 0, 0, 0, 1.0]]), grid, k=3)
    assert [c.smiles for c in ranked[0]] == ["CCN", "CCC", "CCO"]  # NCC is CCN again: merged
    assert ranked[0][0].score == pytest.approx(1.0) and ranked[0][2].score == 0.0
    assert ranked[1][0].smiles == "CCC" and ranked[1][0].score == pytest.approx(1 / 1.5)
    with pytest.raises(Exception, match="grid"):
        retrieval.rank(train, np.arange(5.0) + 1)
