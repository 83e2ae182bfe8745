"""The random-structure-search baseline: exact compositions, reproducible seeds, clear errors for impossible
requests, the per-1,000 stable yield on a hand-made hull result, and ``matsim generate`` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pymatgen.core import Composition, Lattice, Structure

import matsim.metrics.hull
from matsim.core.errors import ConfigError
from matsim.generate.random_search import (
    RandomSearchSettings,
    cell_composition,
    check_compositions,
    compatible_space_groups,
    draw_compositions,
    random_structures,
)
from matsim.metrics.hull import per_thousand_candidates
from test_generate import run_cli, write_yaml
from test_metrics_hull import ToyOracle

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny Na–Cl training CSV (conventional rock-salt Na4Cl4, CsCl-type NaCl, an Na2Cl2 cell)."""
    path = tmp_path_factory.mktemp("random-search")
    crystals = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.tetragonal(3.9, 7.8), ["Na", "Na", "Cl", "Cl"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0, 0, 0.5]]),
    ]
    with (path / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["material_id", "cif"])
        writer.writeheader()
        writer.writerows({"material_id": f"toy-{i}", "cif": s.to(fmt="cif")} for i, s in enumerate(crystals))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATSIM_CACHE_DIR", str(path / "cache"))
        yield path


# --- the generator ------------------------------------------------------------------------------------------------


def test_structures_have_exactly_the_requested_compositions() -> None:
    requests = ["SrTiO3", ("SrTiO3", 2), Composition("Mg2SiO4"), "NaCl"]
    candidates = random_structures(requests, seed=1)
    assert [c.composition for c in candidates] == [cell_composition(r) for r in requests]
    for candidate in candidates:
        assert candidate.structure is not None and candidate.error is None, candidate.error
        assert candidate.structure.composition == candidate.composition  # atoms per cell, not just the ratio
        assert len(candidate.structure) == candidate.composition.num_atoms
        assert candidate.space_group in compatible_space_groups(candidate.composition)
        assert candidate.structure.is_valid(tol=0.5)  # no overlapping atoms
    assert len(candidates[1].structure) == 10  # two formula units of SrTiO3


def test_seeds_reproduce_and_candidates_do_not_depend_on_batching() -> None:
    plan = ["SrTiO3", "BaZrS3", "NaCl", "KMgF3"]
    first = random_structures(plan, seed=7)
    again = random_structures(plan, seed=7)
    assert [c.structure for c in first] == [c.structure for c in again]
    assert [c.space_group for c in first] == [c.space_group for c in again]
    tail = random_structures(plan[2:], seed=7, start=2)  # the same run continued in a second batch
    assert [c.structure for c in tail] == [c.structure for c in first[2:]]
    other = random_structures(plan, seed=8)
    assert [c.structure for c in other] != [c.structure for c in first]
    pool = [Composition("SrTiO3"), Composition("NaCl"), Composition("BaZrS3")]
    assert draw_compositions(pool, 20, seed=3) == draw_compositions(pool, 20, seed=3)
    assert set(draw_compositions(pool, 50, seed=3)) == set(pool)


@pytest.mark.parametrize(
    ("request_", "settings", "fragment"),
    [
        ("SrTiO3", {"space_groups": [225]}, "no Wyckoff positions of space groups [225]"),
        ("Sr8Ti8O24", {"max_atoms": 20}, "40 atoms per cell is more than max_atoms = 20"),
        ("Fe0.5O", {}, "whole, positive numbers of atoms"),
        ("Xx2O3", {}, "cannot read the formula"),
    ],
    ids=["no-space-group-fits", "too-many-atoms", "fractional", "unknown-element"],
)
def test_impossible_requests_fail_clearly(request_: str, settings: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match="composition") as info:
        random_structures([request_], settings=RandomSearchSettings(**settings))
    assert fragment in str(info.value)


def test_failures_are_counted_with_their_reason_and_the_time_limit_holds() -> None:
    # a cell far too small for the atoms: pyxtal cannot place them (one call alone runs for seconds)
    settings = RandomSearchSettings(volume_factor=0.05, max_attempts=50, timeout_s=0.3)
    candidates = random_structures(["Na8Cl8", "NaCl"], seed=0, settings=settings)
    assert [c.structure for c in candidates] == [None, None]
    for candidate in candidates:
        assert candidate.time_s < 2.0 and "timeout" in candidate.error
    assert check_compositions(["NaCl", ("NaCl", 3)]) == [Composition("NaCl"), Composition("Na3Cl3")]


# --- stable structures per 1,000 candidates ------------------------------------------------------------------------


def test_stable_per_thousand_candidates_by_hand() -> None:
    # 6 scored candidates (None: relaxation failed or invalid) out of 10 generated (4 failed to generate)
    e_hull = [-0.05, 0.0, 0.05, 0.2, None, 0.08]
    unique = [True, True, False, True, True, True]
    novel = [True, False, True, True, True, True]
    out = per_thousand_candidates(e_hull, n_candidates=10, unique=unique, novel=novel)
    assert out == pytest.approx({
        "stable_per_1000_0.0": 200.0,   # -0.05 and 0.0
        "stable_per_1000_0.1": 400.0,   # + 0.05 and 0.08
        "sun_per_1000_0.0": 100.0,      # 0.0 is not novel
        "sun_per_1000_0.1": 200.0,      # 0.05 is not unique
    })
    assert per_thousand_candidates(e_hull) == pytest.approx({"stable_per_1000_0.0": 2000 / 6,
                                                             "stable_per_1000_0.1": 4000 / 6})
    with pytest.raises(ConfigError, match="cannot hold"):
        per_thousand_candidates(e_hull, n_candidates=5)
    with pytest.raises(ConfigError, match="S.U.N."):
        per_thousand_candidates(e_hull, unique=unique)


# --- matsim generate ------------------------------------------------------------------------------------------------


def baseline_config(**changes: object) -> dict:
    data = {"baseline": "random_search", "compositions": ["NaCl", {"formula": "NaCl", "formula_units": 2}],
            "num_samples": 5, "batch_size": 2, "seed": 4, "sampler": {"max_attempts": 5},
            "score": {"reference": "train.csv", "oracle": "none"}}
    data.update(changes)
    return data


def test_generate_with_the_random_search_baseline(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(workdir / "rs.yaml", baseline_config())
    code, out, err = run_cli(["generate", str(config), "--output", str(workdir / "out")], capsys)
    assert code == 0, err
    cifs = sorted((workdir / "out" / "structures").glob("*.cif"))
    metrics = json.loads((workdir / "out" / "metrics.json").read_text())
    assert [p.name for p in cifs] == [f"{i:06d}.cif" for i in range(5)]
    assert metrics["n_requested"] == 5 and metrics["n_written"] == 5 and metrics["n_failed"] == 0
    assert metrics["checkpoint"] is None
    baseline = metrics["baseline"]
    assert baseline["name"] == "random_search" and baseline["pyxtal"] and baseline["failures"] == []
    assert baseline["compositions"]["given"] == ["Na1 Cl1", "Na2 Cl2"]
    assert sum(baseline["space_groups"].values()) == 5
    assert metrics["sampling"]["settings"]["max_attempts"] == 5 and metrics["sampling"]["seed"] == 4
    scores = metrics["metrics"]
    assert scores["n"] == 5 and scores["struct_validity"] == 1.0 and scores["novelty"] is not None
    atoms = [len(Structure.from_file(p)) for p in cifs]
    assert atoms == [2, 4, 2, 4, 2]  # candidate i takes composition i mod 2
    # the same seed writes the same CIFs; compositions can be drawn from the training CSV instead
    code, _, err = run_cli(["generate", str(config), "--output", str(workdir / "again")], capsys)
    assert code == 0, err
    assert [p.read_text() for p in sorted((workdir / "again" / "structures").glob("*.cif"))] == [
        p.read_text() for p in cifs]
    drawn = write_yaml(workdir / "drawn.yaml", baseline_config(compositions=None, compositions_from="train.csv",
                                                               score=None))
    code, _, err = run_cli(["generate", str(drawn), "--output", str(workdir / "drawn")], capsys)
    assert code == 0, err
    record = json.loads((workdir / "drawn" / "metrics.json").read_text())["baseline"]["compositions"]
    assert record["n_crystals"] == 3 and record["n_distinct"] == 3  # cells: Na4Cl4 (conventional), NaCl, Na2Cl2
    drawn_atoms = {len(Structure.from_file(p)) for p in (workdir / "drawn" / "structures").glob("*.cif")}
    assert drawn_atoms <= {8, 2, 4}  # the training cells' atom counts are kept


def test_generate_reports_stable_per_thousand_with_an_oracle(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(matsim.metrics.hull, "chgnet_calculator", ToyOracle)  # energies by formula, no forces
    config = write_yaml(workdir / "oracle.yaml", baseline_config(
        compositions=["NaCl2", "Na2Cl", "NaCl3"], num_samples=6,
        score={"reference": "train.csv", "oracle": "chgnet"}))
    code, _, err = run_cli(["generate", str(config), "--output", str(workdir / "oracle")], capsys)
    assert code == 0, err
    scores = json.loads((workdir / "oracle" / "metrics.json").read_text())["metrics"]
    # toy hull of {Na, Cl, NaCl}: NaCl2 +0.133, Na2Cl -0.117, NaCl3 +0.05 eV/atom (tests/test_metrics_hull.py)
    assert scores["stable_per_1000_0.0"] == pytest.approx(1000 * 2 / 6)
    assert scores["stable_per_1000_0.1"] == pytest.approx(1000 * 4 / 6)
    assert scores["sun_per_1000_0.0"] == pytest.approx(1000 * scores["sun_0.0"])
    # matsim score on the written CIFs reports the same yields (every candidate was written)
    code, out, err = run_cli(["score", str(workdir / "oracle" / "structures"), "--reference",
                              str(workdir / "train.csv"), "--oracle", "chgnet", "--json"], capsys)
    assert code == 0, err
    rescored = json.loads(out)
    for key in ("stable_per_1000_0.0", "stable_per_1000_0.1", "sun_per_1000_0.0"):
        assert rescored[key] == pytest.approx(scores[key])


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"checkpoint": "run/best.pt"}, ["exactly one of 'checkpoint'", "'baseline'"]),
        ({"compositions_from": "train.csv"}, ["exactly one of 'compositions'"]),
        ({"condition": {"composition": "NaCl"}}, ["'condition' is for models"]),
        ({"baseline": "airss"}, ["baseline", "'airss' is not allowed"]),
        ({"sampler": {"volume_factr": 1.0}}, ["sampler", "volume_factr: unknown key"]),
        ({"sampler": {"space_groups": [231]}}, ["space groups are numbered 1 to 230"]),
        ({"sampler": {"space_groups": [225]}}, ["composition Na1 Cl1", "no Wyckoff positions"]),
        ({"compositions": None, "compositions_from": "nowhere.csv"}, ["compositions_from", "nowhere.csv"]),
        ({"compositions": ["NaXx"]}, ["NaXx", "cannot read the formula"]),
        ({"seed": -1}, ["seed must be ≥ 0"]),
    ],
    ids=["checkpoint-and-baseline", "both-composition-sources", "condition", "unknown-baseline",
         "unknown-setting", "bad-space-group", "no-space-group-fits", "missing-csv", "bad-formula", "negative-seed"],
)
def test_generate_user_errors(workdir: Path, capsys: pytest.CaptureFixture[str], changes: dict,
                              fragments: list[str]) -> None:
    config = write_yaml(workdir / "bad.yaml", baseline_config(**changes))
    code, out, err = run_cli(["generate", str(config), "--output", str(workdir / "bad-out")], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in out + err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (workdir / "bad-out").exists()  # refused before anything was written
