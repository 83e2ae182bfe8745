"""Datasets: custom keys, calculator fallback, ASE db, missing keys, E0s, splits, the graph cache."""

from __future__ import annotations

import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from matsim.core.errors import ConfigError, MatsimError
from matsim.datasets import (
    DataKeys,
    GraphDataset,
    MissingKeyError,
    e0s_from_isolated_atoms,
    e0s_least_squares,
    explicit_split,
    force_rms,
    frame_targets,
    load_split,
    random_split,
    read_frames,
    save_split,
)


pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
XTB = DATA / "ec_emc_xtb" / "solvent_xtb_train_50.xyz"
XTB_KEYS = DataKeys(energy="energy_xtb", forces="forces_xtb")


@pytest.fixture(scope="module")
def xtb_five(tmp_path_factory) -> Path:
    """Five multi-atom frames of the EC/EMC xTB set (keys energy_xtb / forces_xtb)."""
    if not XTB.is_file():
        pytest.skip("shared EC/EMC data not available")
    frames = [a for a in ase.io.read(XTB, ":") if len(a) > 1][:5]
    path = tmp_path_factory.mktemp("xtb") / "five.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def test_custom_keys_are_read(xtb_five: Path) -> None:
    frames = read_frames(xtb_five)
    assert len(frames) == 5
    for index, atoms in enumerate(frames):
        targets = frame_targets(atoms, XTB_KEYS, source=xtb_five, index=index)
        assert targets["energy"].shape == () and np.isfinite(targets["energy"])
        np.testing.assert_array_equal(targets["forces"], atoms.arrays["forces_xtb"])
        assert targets["energy"] == atoms.info["energy_xtb"]


def test_graph_dataset_with_custom_keys_and_cache(xtb_five: Path, tmp_path: Path) -> None:
    dataset = GraphDataset.from_file(xtb_five, cutoff=4.0, keys=XTB_KEYS, cache_dir=tmp_path)
    assert len(dataset) == 5 and len(list(tmp_path.glob("*.pt"))) == 1
    graph = dataset[2]
    frame = read_frames(xtb_five)[2]
    torch.testing.assert_close(graph.ref_forces, torch.as_tensor(frame.arrays["forces_xtb"]))
    assert float(graph.ref_energy) == frame.info["energy_xtb"]
    assert graph.edge_index.shape[1] > 0 and int(graph.frame_id) == 2
    # the second load hits the cache (same tensors) and a batch stacks the targets per system
    again = GraphDataset.from_file(xtb_five, cutoff=4.0, keys=XTB_KEYS, cache_dir=tmp_path)
    torch.testing.assert_close(again[2].edge_index, graph.edge_index)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch.ref_energy.shape == (2,) and batch.ref_forces.shape == (batch.num_nodes, 3)
    # a different cutoff is a different cache entry
    GraphDataset.from_file(xtb_five, cutoff=3.0, keys=XTB_KEYS, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert dataset.with_dtype(torch.float32)[0].pos.dtype == torch.float32


def test_missing_key_names_key_file_and_frame(xtb_five: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingKeyError, match=r"five\.xyz: frame 0 has no energy under key 'energy'") as info:
        GraphDataset.from_file(xtb_five, cutoff=4.0, cache=False)
    assert "energy_xtb" in str(info.value)  # the message lists the keys that are there
    # a key missing in a later frame only
    frames = read_frames(xtb_five)
    del frames[3].info["energy_xtb"]
    broken = tmp_path / "broken.xyz"
    ase.io.write(broken, frames, format="extxyz")
    with pytest.raises(MatsimError, match=r"broken\.xyz: frame 3 has no energy under key 'energy_xtb'"):
        GraphDataset.from_file(broken, cutoff=4.0, keys=XTB_KEYS, cache=False)


def test_calculator_results_stress_virial_and_ase_db(tmp_path: Path) -> None:
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=np.eye(3) * 5, pbc=True)
    stress = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03])
    atoms.calc = SinglePointCalculator(atoms, energy=-5.0, forces=np.ones((3, 3)), stress=stress)
    targets = frame_targets(atoms, DataKeys(), required=("energy", "forces", "stress"))
    assert targets["energy"] == -5.0 and targets["stress"][0, 1] == 0.03 and targets["stress"][1, 2] == 0.01
    # a virial (info key) becomes -virial / volume
    other = atoms.copy()
    other.info["my_virial"] = np.eye(3).reshape(-1) * 125.0
    got = frame_targets(other, DataKeys(virial="my_virial"), required=("stress",))
    np.testing.assert_allclose(got["stress"], -np.eye(3))
    # ASE database: calculator results and custom data keys
    import ase.db

    db_path = tmp_path / "frames.db"
    with ase.db.connect(db_path) as db:
        db.write(atoms, my_energy=-4.0, data={"my_forces": np.full((3, 3), 2.0)})
    frames = read_frames(db_path)
    assert len(frames) == 1
    t = frame_targets(frames[0], DataKeys(energy="my_energy", forces="my_forces"))
    assert t["energy"] == -4.0 and t["forces"][0, 0] == 2.0
    t = frame_targets(frames[0], DataKeys())
    assert t["energy"] == -5.0


def test_e0s_by_least_squares_recover_known_values() -> None:
    rng = np.random.default_rng(3)
    known = {1: -13.6, 6: -1029.5, 8: -2041.1}
    frames, energies = [], []
    for _ in range(40):
        counts = rng.integers(0, 6, size=3) + np.array([1, 0, 0])
        numbers = np.repeat([1, 6, 8], counts)
        frames.append(Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3))))
        energies.append(sum(known[int(z)] for z in numbers) + rng.normal(scale=1e-4))
    e0s = e0s_least_squares(frames, energies)
    assert set(e0s) == set(known)
    for z, value in known.items():
        assert abs(e0s[z] - value) < 1e-3
    # isolated-atom frames give their energies exactly
    singles = [Atoms(numbers=[z], positions=[[0, 0, 0]]) for z in known]
    assert e0s_from_isolated_atoms(singles, list(known.values())) == known
    # one composition only: rank-deficient, warned, and the mean energy is still reproduced
    same = [Atoms("C2H6O", positions=rng.normal(size=(9, 3))) for _ in range(5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e0 = e0s_least_squares(same, [-4209.0, -4209.2, -4209.4, -4209.1, -4209.3])
    assert any("minimum-norm" in str(w.message) for w in caught)
    assert abs(2 * e0[6] + 6 * e0[1] + e0[8] - (-4209.2)) < 1e-9
    assert force_rms([np.full((2, 3), 2.0), np.full((1, 3), -2.0)]) == pytest.approx(2.0)


def test_random_splits_are_reproducible_and_disjoint(tmp_path: Path) -> None:
    a = random_split(100, valid=0.1, seed=7)
    b = random_split(100, valid=0.1, seed=7)
    c = random_split(100, valid=0.1, seed=8)
    assert a == b and a.valid != c.valid
    assert len(a.valid) == 10 and len(a.train) == 90
    assert not set(a.train) & set(a.valid)
    d = random_split(1000, valid=50, train=950, seed=0)
    assert len(d.train) == 950 and len(d.valid) == 50 and not set(d.train) & set(d.valid)
    small = random_split(100, valid=10, train=20, seed=7)
    assert len(small.train) == 20 and small.valid == a.valid  # validation frames do not depend on train size
    save_split(a, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == a
    e = explicit_split(10, [0, 1, 2], [5, 6])
    assert e.train == [0, 1, 2] and e.valid == [5, 6]
    with pytest.raises(ConfigError, match="both"):
        explicit_split(10, [0, 1], [1])
    with pytest.raises(ConfigError, match="out of range"):
        explicit_split(10, [0, 12])
    with pytest.raises(ConfigError, match="exceed"):
        random_split(10, valid=5, train=6)
