"""Cluster cutting from periodic snapshots, the ``matsim data electrolyte`` pipeline and active-learning selection."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones

from matsim.core.config import validate_config
from matsim.core.errors import ConfigError
from matsim.datasets.active_learning import force_disagreement, select_by_disagreement
from matsim.datasets.clusters import ClusterOptions, CutReport, analyse_snapshot, cut_clusters
from matsim.datasets.electrolyte_sampling import ElectrolyteSamplingConfig, sample_electrolyte

L = 10.0  # Å, edge of the hand-made box


def _water(o: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """O, H, H of a water-like molecule at ``o``, its hydrogens pointing away along ``direction``."""
    d = direction / np.linalg.norm(direction)
    side = np.cross(d, [0.3, 0.5, 0.8])
    side /= np.linalg.norm(side)
    return np.array([o, o + 0.96 * (0.8 * d + 0.6 * side), o + 0.96 * (0.8 * d - 0.6 * side)])


def _box() -> Atoms:
    """A Li+ at a box corner with 3 water-like molecules and one OH- 2.0 Å away (tetrahedral), so the shell is split
    across the boundary, plus 3 more waters far from it. Molecules in order: Li, 3 waters, OH-, 3 waters."""
    li = np.array([1.45, 1.45, 1.45])  # oxygens 0.3 Å inside a face, hydrogens beyond it
    dirs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    symbols, positions, mol_id, charge = ["Li"], [li], [0], [1]
    for k, d in enumerate(dirs[:3]):
        symbols += ["O", "H", "H"]
        positions += list(_water(li + 2.0 * d, d))
        mol_id += [k + 1] * 3
        charge += [0, 0, 0]
    o = li + 2.0 * dirs[3]
    symbols += ["O", "H"]
    positions += [o, o + 0.97 * dirs[3]]
    mol_id += [4, 4]
    charge += [-1, 0]
    for k, centre in enumerate([[5.0, 5.0, 5.0], [5.0, 7.9, 5.0], [7.9, 5.0, 5.0]]):
        symbols += ["O", "H", "H"]
        positions += list(_water(np.array(centre), np.array([0.0, 0.0, 1.0])))
        mol_id += [5 + k] * 3
        charge += [0, 0, 0]
    atoms = Atoms(symbols, positions=positions, cell=[L, L, L], pbc=True)
    atoms.wrap()
    atoms.arrays["mol_id"] = np.array(mol_id)
    atoms.arrays["formal_charge"] = np.array(charge)
    return atoms


def _max_bond(cluster: Atoms) -> float:
    """The longest O-H distance within one molecule (whole molecules keep ~1 Å)."""
    longest = 0.0
    for m in np.unique(cluster.arrays["mol_id"]):
        pos = cluster.positions[cluster.arrays["mol_id"] == m]
        longest = max(longest, float(np.linalg.norm(pos - pos[0], axis=1).max()))
    return longest


def test_hand_made_box_is_split_across_the_boundary() -> None:
    box = _box()
    spans = [np.ptp(box.positions[box.arrays["mol_id"] == m], axis=0).max() for m in range(1, 5)]
    assert sum(span > L / 2 for span in spans) >= 2  # molecules wrapped into pieces on opposite faces


def test_shell_and_contact_ion_pair_are_whole_with_the_right_composition_and_charge() -> None:
    report = CutReport()
    clusters = cut_clusters(_box(), ClusterOptions(min_atoms=5), seed=0, report=report)
    cip = [c for c in clusters if c.info["cluster_kind"] == "contact_ion_pair"]
    assert len(cip) == 1
    c = cip[0]
    assert c.get_chemical_formula() == "H7LiO4" and c.info["charge"] == 0
    assert c.arrays["formal_charge"].sum() == 0 and sorted(set(c.arrays["mol_id"])) == [0, 1, 2, 3, 4]
    assert not c.pbc.any() and np.allclose(c.get_center_of_mass(), 0.0, atol=1e-8)
    assert _max_bond(c) < 1.7
    li = c.positions[c.symbols == "Li"][0]
    li_o = np.linalg.norm(c.positions[c.symbols == "O"] - li, axis=1)
    assert np.allclose(li_o, 2.0, atol=1e-6)
    assert c.info["species"] == "Li H2O3 HO" and c.info["source"] == "frame0/mol0" and c.info["shell_complete"]
    # the Li shell with an anion is the same molecule set: cut once only, within a frame
    assert not [x for x in clusters if x.info["cluster_kind"] == "li_shell"]
    assert report.skipped["duplicate"] >= 1
    keys = [frozenset(np.asarray(x.info["source_mols"]).ravel().tolist()) for x in clusters]
    assert len(keys) == len(set(keys))


def test_molecules_are_made_whole_across_the_boundary() -> None:
    snap = analyse_snapshot(_box())
    for members in snap.members:
        pos = snap.unwrapped[members]
        assert np.linalg.norm(pos - pos[0], axis=1).max() < 1.7
    assert list(snap.charge) == [1, 0, 0, 0, -1, 0, 0, 0]


def test_dimers_trimers_and_anion_pairs_have_whole_molecules_and_charge() -> None:
    options = ClusterOptions(min_atoms=5, per_kind=5, kinds=["solvent_dimer", "solvent_trimer", "anion_solvent"])
    clusters = cut_clusters(_box(), options, seed=1)
    kinds = {c.info["cluster_kind"] for c in clusters}
    assert kinds == {"solvent_dimer", "solvent_trimer", "anion_solvent"}
    for c in clusters:
        n_mol = len(set(c.arrays["mol_id"]))
        assert n_mol == {"solvent_dimer": 2, "solvent_trimer": 3, "anion_solvent": 2}[c.info["cluster_kind"]]
        assert c.info["charge"] == (-1 if c.info["cluster_kind"] == "anion_solvent" else 0)
        assert _max_bond(c) < 1.7
        d = np.linalg.norm(c.positions[:, None] - c.positions[None], axis=-1) + 10 * np.eye(len(c))
        assert d.min() > 0.9  # no overlaps


def test_atom_count_window_trims_or_skips() -> None:
    trimmed = cut_clusters(_box(), ClusterOptions(min_atoms=5, max_atoms=9, kinds=["contact_ion_pair"]))
    assert len(trimmed) == 1 and len(trimmed[0]) <= 9 and not trimmed[0].info["shell_complete"]
    assert "HO" in trimmed[0].info["species"]  # the anion is never trimmed away
    report = CutReport()
    skipped = cut_clusters(_box(), ClusterOptions(min_atoms=5, max_atoms=9, kinds=["contact_ion_pair"],
                                                  trim_shells=False), report=report)
    assert skipped == [] and report.skipped["too large"] == 1
    report = CutReport()
    assert cut_clusters(_box(), ClusterOptions(min_atoms=13), report=report) == []
    assert report.skipped["too small"] > 0
    with pytest.raises(ConfigError, match="min_atoms"):
        validate_config(ClusterOptions, {"min_atoms": 70, "max_atoms": 60})


def test_overlapping_atoms_are_skipped() -> None:
    box = _box()
    box.positions[-3:] = box.positions[-6:-3] + 0.2  # last water on top of its neighbour
    report = CutReport()
    options = ClusterOptions(min_atoms=5, per_kind=6, n_nearest=1, kinds=["solvent_dimer"])
    clusters = cut_clusters(box, options, report=report)
    assert report.skipped["overlapping atoms"] >= 1
    assert all(7 not in np.asarray(c.info["source_mols"]).tolist() for c in clusters)


@pytest.fixture(scope="module")
def ec_box(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Atoms]:
    """A small LiPF6/EC box from the builder, written as a 2-frame trajectory (the second frame shifted)."""
    from matsim.md.builder import SystemConfig, build_box

    box = build_box(SystemConfig(solvents=[{"name": "EC"}], salts=[{"name": "LiPF6", "concentration": 1.5}],
                                 n_molecules=12, density=1.3, tolerance=1.8, seed=0))
    second = box.copy()
    second.positions += np.array([1.0, 2.0, 3.0])  # a rigid shift through the boundary
    second.wrap()
    path = tmp_path_factory.mktemp("traj") / "traj.extxyz"
    ase.io.write(path, [box, second], format="extxyz")
    return path, box


def _signature(clusters: list[Atoms]) -> list[tuple]:
    return [(c.info["cluster_kind"], c.info["source"], len(c), round(float(np.abs(c.positions).sum()), 6))
            for c in clusters]


def test_reproducible_by_seed_and_whole_in_a_built_box(ec_box: tuple[Path, Atoms]) -> None:
    _, box = ec_box
    options = ClusterOptions(shell_cutoff=3.5, per_kind=3)  # a packed box keeps Li 2 Å from everything: wider shell
    a = cut_clusters(box, options, seed=3)
    b = cut_clusters(box, options, seed=3)
    assert a and _signature(a) == _signature(b)
    assert any(_signature(cut_clusters(box, options, seed=s)) != _signature(a) for s in range(4, 8))
    for c in a:
        assert 10 <= len(c) <= 60 and c.info["charge"] == c.arrays["formal_charge"].sum()
        for m in np.unique(c.arrays["mol_id"]):  # bonded atoms stay within 1.7 Å of some other atom of the molecule
            pos = c.positions[c.arrays["mol_id"] == m]
            if len(pos) > 1:
                d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(len(pos))
                assert d.min(axis=1).max() < 1.7


def test_pipeline_end_to_end_on_a_given_trajectory(ec_box: tuple[Path, Atoms], tmp_path: Path) -> None:
    path, _ = ec_box
    config = validate_config(ElectrolyteSamplingConfig, {
        "liquids": [{"name": "EC_LiPF6", "trajectory": str(path)}],
        "snapshots": {"count": 2},
        "clusters": {"shell_cutoff": 3.5, "per_kind": 2},
        "seed": 1,
    })
    result = sample_electrolyte(config, tmp_path / "out")
    frames = ase.io.read(result.clusters_path, index=":")
    summary = json.loads(result.summary_path.read_text())
    assert summary["n_clusters"] == len(frames) == len(result.clusters) > 0
    assert summary["liquids"]["EC_LiPF6"]["snapshots"] == [0, 1]
    assert sum(summary["by_kind"].values()) == sum(summary["by_size"].values()) == len(frames)
    assert summary["by_liquid"]["EC_LiPF6"] == summary["by_kind"]
    snapshots = {f.info["snapshot"] for f in frames}
    assert snapshots == {"EC_LiPF6/frame0", "EC_LiPF6/frame1"}
    for frame in frames:
        assert not frame.pbc.any() and frame.info["liquid"] == "EC_LiPF6" and 10 <= len(frame) <= 60
        assert frame.info["charge"] == frame.arrays["formal_charge"].sum()


def test_config_rejects_unknown_keys_and_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        validate_config(ElectrolyteSamplingConfig, {"liquids": [{"trajectory": "x.xyz"}], "colour": 1})
    with pytest.raises(ConfigError, match="exactly one"):
        validate_config(ElectrolyteSamplingConfig, {"liquids": [{"name": "x"}]})
    grid = validate_config(ElectrolyteSamplingConfig, {"grid": {"solvents": ["EC", "DME"], "salts": ["LiFSI"]}})
    assert [x.label() for x in grid.all_liquids()] == ["EC_LiFSI-1M", "DME_LiFSI-1M"]


# ------------------------------------------------------------------------------------------------ active learning


def _argon_frames() -> list[Atoms]:
    """Ar3 triangles; in the attractive tail of LJ (σ = 2 Å) forces, and the disagreement of two ε, grow as they
    shrink."""
    frames = []
    for k, r in enumerate([4.0, 3.2, 3.0, 3.6, 3.4, 3.8]):
        atoms = Atoms("Ar3", positions=[[0, 0, 0], [r, 0, 0], [r / 2, 0.9 * r, 0]])
        atoms.info["cluster_kind"] = "a" if k % 2 else "b"
        frames.append(atoms)
    return frames


def test_force_disagreement_is_the_per_atom_std() -> None:
    forces = np.zeros((2, 3, 3))
    forces[1, 2, 0] = 2.0  # atom 2 differs by 2 eV/Å between two models: std 1
    assert force_disagreement(forces, "max") == pytest.approx(1.0)
    assert force_disagreement(forces, "mean") == pytest.approx(1.0 / 3.0)


def test_selection_picks_the_frames_two_calculators_disagree_on_most() -> None:
    frames = _argon_frames()
    models = [LennardJones(sigma=2.0, epsilon=0.01, rc=8.0), LennardJones(sigma=2.0, epsilon=0.02, rc=8.0)]
    selection = select_by_disagreement(frames, models, 2)
    assert selection.indices == [2, 1]  # the two smallest triangles
    assert selection.frames[0].info["force_disagreement"] >= selection.frames[1].info["force_disagreement"] > 0
    assert selection.frames[0].calc is None and selection.frames[0].info["candidate_index"] == 2
    # a ceiling drops the most extreme frame, a floor the quiet ones
    capped = select_by_disagreement(frames, models, 2, ceiling=0.5 * (selection.scores[2] + selection.scores[1]))
    assert capped.indices == [1, 4] and capped.skipped["above ceiling"] == 1
    floored = select_by_disagreement(frames, models, 6, floor=selection.scores[4])
    assert sorted(floored.indices) == [1, 2, 4] and floored.skipped["below floor"] == 3
    # per-kind quota: one frame of kind "b" (even indices) first, then the best of the rest
    quota = select_by_disagreement(frames, models, 2, per_kind={"a": 2})
    assert sorted(quota.indices) == [1, 3]
    with pytest.raises(ConfigError):
        select_by_disagreement(frames, models[:1], 2)


def test_selection_with_tiny_bamboo_checkpoints_through_the_cli(ec_box: tuple[Path, Atoms], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import matsim.models
    from matsim.cli.app import main

    ensemble = []
    for k in range(2):
        import torch

        torch.manual_seed(k)
        model = matsim.models.create("bamboo", cutoff=4.0, species=[1, 3, 6, 8, 9, 15], channels=8, num_layers=1,
                                     num_heads=2)
        ensemble.append(str(matsim.models.save_model(model, tmp_path / f"m{k}.pt")))
    path, _ = ec_box
    config = tmp_path / "config.yaml"
    config.write_text(f"liquids: [{{name: EC_LiPF6, trajectory: {path}}}]\nsnapshots: {{count: 1}}\n"
                      "clusters: {shell_cutoff: 3.5, per_kind: 1}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "electrolyte", str(config), "--output", str(tmp_path / "out"), "--select", "2",
              "--ensemble", ensemble[0], "--ensemble", ensemble[1]])
    out = capsys.readouterr().out
    assert int(exit_info.value.code or 0) == 0, out
    selected = ase.io.read(tmp_path / "out" / "selected.extxyz", index=":")
    clusters = ase.io.read(tmp_path / "out" / "clusters.extxyz", index=":")
    assert len(selected) == 2 and "selected by ensemble disagreement" in out
    record = json.loads((tmp_path / "out" / "selection.json").read_text())
    scores = sorted((f["force_disagreement"] for f in record["selected_frames"]), reverse=True)
    assert record["candidates"] == len(clusters) and scores[0] == selected[0].info["force_disagreement"]


def test_parallel_seed_md_gives_the_clusters_of_the_serial_run(tmp_path: Path) -> None:
    import matsim.models
    import torch

    torch.manual_seed(0)
    model = matsim.models.create("bamboo", cutoff=4.0, species=[1, 3, 6, 8, 9, 15], channels=8, num_layers=1,
                                 num_heads=2, charges=False)
    checkpoint = matsim.models.save_model(model, tmp_path / "seed.pt")
    system = {"solvents": [{"name": "EC"}], "salts": [{"name": "LiPF6", "concentration": 1.5}], "n_molecules": 8,
              "density": 1.3, "tolerance": 1.8}
    data = {
        "liquids": [{"name": "a", "system": {**system, "seed": 0}}, {"name": "b", "system": {**system, "seed": 1}}],
        "md": {"model": str(checkpoint), "device": "cpu", "minimise_steps": 2, "equilibration_steps": 2,
               "temperature_K": 300.0},
        "snapshots": {"count": 2, "every_steps": 2},
        "clusters": {"shell_cutoff": 3.5, "per_kind": 1},
    }
    serial = sample_electrolyte(validate_config(ElectrolyteSamplingConfig, data), tmp_path / "serial")
    data["md"]["jobs"] = 2
    parallel = sample_electrolyte(validate_config(ElectrolyteSamplingConfig, data), tmp_path / "parallel")
    assert serial.summary["liquids"].keys() == {"a", "b"}
    assert all(entry["snapshots"] for entry in parallel.summary["liquids"].values())
    assert serial.clusters and _signature(parallel.clusters) == _signature(serial.clusters)
