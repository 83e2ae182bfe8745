"""Molecules without spectra for DiffSpectra's structure prior: ``matsim spectra conformers`` (STRUCTURES.h5), joining
them to a spectra training set with held-out compounds left out, and the loss's use of the null condition for
them (tiny models, CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from matsim.datasets.molecules import MoleculeSpectraDataset
from matsim.datasets.spectra import molecule_key
from matsim.datasets.structures import read_structures, write_structures
from matsim.models.diffspectra import DiffSpectra
from matsim.reference.conformers import compute_conformers
from test_diffspectra import TINY, write_synthetic_spectra
from test_generate import assert_one_line_error, run_cli, write_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

#: Spectra molecules; "CC(O)=O" / "OC(C)=O" are one compound written twice (the key must see it).
SPECTRA_SMILES = ["C", "CC", "CO", "CN", "C=O", "CCO", "CC=O", "CC(O)=O"]
#: Molecules without spectra (OC(C)=O and CO are compounds of the spectra file; the last is a cage rdkit cannot embed).
STRUCTURE_SMILES = ["CCC", "CCCO", "OCCO", "c1ccncc1", "CC#N", "OC(C)=O", "CO", "CC1=CC23COC2C1O3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prior")
    write_synthetic_spectra(path / "spectra.h5", SPECTRA_SMILES)
    (path / "structures.smi").write_text("".join(f"{s} s{i}\n" for i, s in enumerate(STRUCTURE_SMILES)))
    summary = compute_conformers(path / "structures.smi", path / "structures.h5", n_jobs=1)
    assert summary.done == 7 and list(summary.failed) == ["s7"]
    return path


def test_conformers_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.smi").write_text("CCO a\nCC1=CC23COC2C1O3 b\n")
    code, out, _ = run_cli(["spectra", "conformers", str(tmp_path / "in.smi"), "-o", str(tmp_path / "s.h5"),
                            "--jobs", "2"], capsys)
    assert code == 0 and "1 conformers, 1 failed" in out and "b failed: rdkit cannot embed" in out
    assert read_structures(tmp_path / "s.h5").smiles == ["CCO"]
    code, out, err = run_cli(["spectra", "conformers", str(tmp_path / "none.smi"), "-o", str(tmp_path / "t.h5")],
                             capsys)
    assert_one_line_error(code, out, err, "none.smi")


def test_conformers_file_holds_heavy_atoms_in_smiles_order_with_keys(files: Path) -> None:
    data = read_structures(files / "structures.h5")
    assert data.ids == [f"s{i}" for i in range(7)] and data.smiles == STRUCTURE_SMILES[:7]
    assert [f["id"] for f in data.failed] == ["s7"] and "embed" in data.failed[0]["reason"]
    assert data.keys == [molecule_key(s) for s in STRUCTURE_SMILES[:7]]
    assert data.attrs["n_conformers"] == 10 and "rdkit" in data.attrs["software"]
    for i, smiles in enumerate(data.smiles):
        numbers, positions = data.molecule(i)
        assert list(numbers) == [a.GetAtomicNum() for a in Chem.MolFromSmiles(smiles).GetAtoms()]
        bonded = [np.linalg.norm(positions[b.GetBeginAtomIdx()] - positions[b.GetEndAtomIdx()])
                  for b in Chem.MolFromSmiles(smiles).GetBonds()]
        assert all(1.1 < d < 1.6 for d in bonded)  # a relaxed conformer, not random coordinates


def test_structures_round_trip_and_errors(tmp_path: Path) -> None:
    conformers = [(np.array([6, 8]), np.array([[0.0, 0, 0], [1.2, 0, 0]])), (np.array([7]), np.zeros((1, 3)))]
    write_structures(tmp_path / "s.h5", ["C=O", "N"], ["a", "b"], ["C=O", "N"], conformers, {"note": "x"},
                     [("c", "C1CC", "cannot parse")])
    data = read_structures(tmp_path / "s.h5")
    assert data.smiles == ["C=O", "N"] and data.attrs["note"] == "x" and data.failed[0]["id"] == "c"
    np.testing.assert_allclose(data.molecule(0)[1], conformers[0][1])
    assert list(data.molecule(1)[0]) == [7]
    from matsim.core.errors import InputFileError

    with pytest.raises(InputFileError, match="no such file"):
        read_structures(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(InputFileError, match="not a readable HDF5"):
        read_structures(tmp_path / "bad.h5")
    with pytest.raises(InputFileError, match="not a structures file"):
        import h5py

        with h5py.File(tmp_path / "other.h5", "w") as f:
            f.attrs["format"] = "matsim-spectra"
        read_structures(tmp_path / "other.h5")


def test_joined_dataset_keeps_spectra_aligned_and_leaves_held_out_compounds_out(files: Path) -> None:
    spectra = MoleculeSpectraDataset.from_file(files / "spectra.h5")
    held_out = spectra.select([2, 7])  # CO and CC(O)=O
    structures = MoleculeSpectraDataset.from_structures(files / "structures.h5", spectra.grid,
                                                        exclude={molecule_key(s) for s in held_out.smiles})
    assert structures.smiles == ["CCC", "CCCO", "OCCO", "c1ccncc1", "CC#N"]  # OC(C)=O is CC(O)=O, and CO left out
    train = spectra.select([0, 1, 3, 4, 5, 6])
    joined = MoleculeSpectraDataset.concatenate([train, train, structures])
    assert len(joined) == 17 and joined.has_spectrum.tolist() == [True] * 12 + [False] * 5
    for i in range(12):
        np.testing.assert_array_equal(joined.spectrum(i), spectra.spectra[[0, 1, 3, 4, 5, 6][i % 6]])
    picked = joined.select([13, 4, 16, 0])
    assert picked.smiles == ["CCCO", "CCO", "CC#N", "C"] and picked.has_spectrum.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(picked.spectrum(1), spectra.spectra[5])
    batch = picked.batch(range(4))
    assert batch.has_spectrum.tolist() == [False, True, False, True]
    assert float(batch.spectra[0].abs().sum()) == 0 and float(batch.spectra[1].max()) == pytest.approx(1.0)


def test_loss_uses_the_null_condition_without_a_spectrum(files: Path) -> None:
    data = MoleculeSpectraDataset.from_file(files / "spectra.h5")
    model = DiffSpectra(**DiffSpectra.data_hyperparameters(data), **TINY).eval()
    with torch.no_grad():  # zero-initialised adaLN gates would hide the condition
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = data.batch(range(len(data)))

    def loss(b):
        torch.manual_seed(3)
        return model.loss(b)

    garbage = torch.rand_like(batch.spectra)
    without = type(batch)(**{**batch.__dict__, "has_spectrum": torch.zeros(len(data), dtype=torch.bool)})
    changed = type(batch)(**{**without.__dict__, "spectra": garbage})
    with_garbage = type(batch)(**{**batch.__dict__, "spectra": garbage})
    with torch.no_grad():
        assert float(loss(without)["loss"]) == float(loss(changed)["loss"])  # the spectra are not read
        assert float(loss(without)["num_atoms"]) == 0.0
        assert float(loss(batch)["loss"]) != float(loss(with_garbage)["loss"])  # with spectra they condition
    model.zero_grad()
    loss(without)["loss"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.count_head.parameters())


def test_training_with_structures(files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matsim.train.generative import GenerativeTrainer
    from matsim.train.generative_config import load_generative_config

    config = write_yaml(tmp_path / "train.yaml", {
        "run_dir": str(tmp_path / "run"), "seed": 0, "device": "cpu",
        "model": {"name": "diffspectra", "hyperparameters": TINY},
        "data": {"train": str(files / "spectra.h5"), "structures": str(files / "structures.h5"),
                 "spectra_repeat": 3, "split": {"train_indices": [0, 1, 3, 4, 5, 6], "valid_indices": [2]}},
        "optimizer": {"lr": 0.003, "batch_size": 8},
        "training": {"max_epochs": 3, "ema_decay": 0.0, "progress": False},
    })
    trainer = GenerativeTrainer(load_generative_config(config))
    train = trainer.train_set
    # 6 training spectra x 3, then the structures less CO (validation) and CC(O)=O (row 7: neither train nor valid)
    assert len(train) == 18 + 5 and int(train.has_spectrum.sum()) == 18
    assert "CO" not in train.smiles and "OC(C)=O" not in train.smiles and len(trainer.valid_set) == 1
    assert trainer.hyperparameters["max_atoms"] == 6  # pyridine, from the structures
    trainer.fit()
    assert (tmp_path / "run" / "best.pt").is_file()
    # best.pt is chosen on the loss without the atom-count term
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        expected = float(row["valid_loss"]) - 0.1 * float(row["valid_num_atoms_loss"])
        assert float(row["valid_selection_loss"]) == pytest.approx(expected, rel=1e-5)
    best = min(rows, key=lambda r: float(r["valid_selection_loss"]))
    from matsim.core.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "best.pt").metadata["epoch"] == int(best["epoch"])

    # init_from: a new run starts from the checkpoint's weights and hyperparameters (here on the spectra alone)
    parent = tmp_path / "run" / "best.pt"
    follow = load_generative_config(config, [f"run_dir={tmp_path / 'follow'}", "data.structures=null",
                                             "model.hyperparameters={}", f"model.init_from={parent}"])
    child = GenerativeTrainer(follow)
    assert child.hyperparameters == trainer.hyperparameters and len(child.train_set) == 18
    for key, value in load_checkpoint(parent).state_dict.items():
        torch.testing.assert_close(child.model.state_dict()[key], value)
    with pytest.raises(Exception, match="not both"):
        load_generative_config(config, [f"model.init_from={parent}"])
    code, out, err = run_cli(["train", str(config), "--set", "data.structures=" + str(files / "missing.h5"),
                              "--set", f"run_dir={tmp_path / 'run2'}"], capsys)
    assert_one_line_error(code, out, err, "missing.h5")
