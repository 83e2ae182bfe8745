"""DiffSpectra: SpecFormer, the equivariant denoiser, training through ``matsim train``, sampling rdkit molecules,
``matsim elucidate`` with a checkpoint, and user errors (tiny models, CPU).

The spectra file is written in the documented ``SPECTRA.h5`` format with rdkit conformers and synthetic spectra
(group-frequency sticks broadened with :func:`matsim.reference.spectra.broaden`): GFN2 costs seconds per molecule
on a busy 2-core machine, and the real pipeline is tested in ``test_spectra.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from rdkit import Chem

from matsim.core.errors import ConfigError
from matsim.datasets.molecules import MoleculeSpectraDataset, molecule_from_graph
from matsim.datasets.spectra import SpectraWriter, SpectrumRecord
from matsim.models import load_model
from matsim.models.diffspectra import DiffSpectra, MoleculeDenoiser
from matsim.models.layers.specformer import SpecFormer, info_nce
from matsim.reference.spectra import IR_GRID, SpectrumSettings, broaden, conformer_from_smiles, normalise
from matsim.reference.spectra_batch import file_attributes
from test_generate import assert_one_line_error, run_cli, write_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

SMILES = ["C", "N", "O", "CC", "CO", "CN", "C=O", "C#N", "CC=O", "OC=O", "CC#N", "CCO", "CCN", "C=CC", "c1ccoc1",
          "NC=O"]
TINY = {"hidden": 16, "pair_hidden": 8, "layers": 2, "heads": 2, "num_rbf": 8, "spec_dim": 16, "spec_layers": 1,
        "spec_heads": 2, "patch_size": 100, "patch_stride": 100, "timesteps": 50}
#: Toy group frequencies (cm⁻¹) of bond classes and of H on C / N / O, for the synthetic spectra.
_BANDS = {Chem.BondType.SINGLE: 1050.0, Chem.BondType.DOUBLE: 1700.0, Chem.BondType.TRIPLE: 2250.0,
          Chem.BondType.AROMATIC: 1500.0, 6: 2950.0, 7: 3350.0, 8: 3600.0}


def _synthetic_record(index: int, smiles: str) -> SpectrumRecord:
    mol = Chem.MolFromSmiles(smiles)
    sticks = [_BANDS[b.GetBondType()] + 13.0 * i for i, b in enumerate(mol.GetBonds())]
    sticks += [_BANDS[a.GetAtomicNum()] - 17.0 * a.GetTotalNumHs() for a in mol.GetAtoms() if a.GetTotalNumHs()]
    frequencies = np.sort(np.array(sticks, dtype=np.float32))
    intensities = np.linspace(20.0, 60.0, len(frequencies), dtype=np.float32)
    spectrum, peak = normalise(broaden(frequencies, intensities))
    atoms = conformer_from_smiles(smiles)
    return SpectrumRecord(smiles=smiles, id=f"m{index}", method="synthetic", ir=spectrum, ir_max=peak, energy=0.0,
                          atomic_numbers=atoms.numbers, positions=atoms.positions, frequencies=frequencies,
                          intensities=intensities)


def write_synthetic_spectra(path: Path, smiles: list[str]) -> Path:
    """A ``SPECTRA.h5`` of the synthetic spectra of ``smiles`` (ids m0, m1, ...)."""
    with SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings())) as writer:
        for i, s in enumerate(smiles):
            writer.append(_synthetic_record(i, s))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diffspectra")
    write_synthetic_spectra(path / "spectra.h5", SMILES)
    return path


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """A tiny DiffSpectra trained through ``matsim train`` on the 16 molecules (validated on the same)."""
    config = write_yaml(workdir / "train.yaml", {
        "run_dir": str(workdir / "run"), "seed": 0, "device": "cpu",
        "model": {"name": "diffspectra", "hyperparameters": TINY},
        "data": {"train": str(workdir / "spectra.h5"), "valid": str(workdir / "spectra.h5")},
        "optimizer": {"lr": 0.003, "batch_size": 16},
        "schedule": {"type": "cosine", "warmup_epochs": 0},
        "training": {"max_epochs": 60, "ema_decay": 0.0, "progress": False, "valid_every": 20},
    })
    with pytest.raises(SystemExit) as exit_info:
        from matsim.cli.app import main

        main(["train", str(config)])
    assert int(exit_info.value.code or 0) == 0
    return workdir / "run"


# --- SpecFormer --------------------------------------------------------------------------------------------------
def test_specformer_shape_and_batch_order() -> None:
    encoder = SpecFormer(len(IR_GRID), dim=16, patch_size=100, patch_stride=50, layers=1, heads=2).eval()
    spectra = torch.rand(5, 1, len(IR_GRID))
    out = encoder(spectra)
    assert out.shape == (5, 16) and encoder.patches == [(len(IR_GRID) - 100) // 50 + 1]
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(encoder(spectra[order]), out[order], atol=1e-5, rtol=1e-5)
    two = SpecFormer([len(IR_GRID), 400], modalities=2, dim=16, patch_size=50, layers=1, heads=2).eval()
    assert two([spectra[:, 0], torch.rand(5, 400)]).shape == (5, 16)
    with pytest.raises(ValueError, match="points"):
        encoder(torch.rand(2, 1, 300))
    a = torch.randn(6, 16)
    assert float(info_nce(a, a)) < float(info_nce(a, torch.randn(6, 16)))


# --- the denoiser ------------------------------------------------------------------------------------------------
def _denoiser_inputs(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    b, n = 2, 5
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    types = torch.randn(b, n, 3, generator=generator, dtype=torch.float64) * mask.unsqueeze(-1)
    charges = torch.randn(b, n, 2, generator=generator, dtype=torch.float64) * mask.unsqueeze(-1)
    bonds = torch.randn(b, n, n, 5, generator=generator, dtype=torch.float64)
    bonds = (bonds + bonds.transpose(1, 2)) * (mask.unsqueeze(1) & mask.unsqueeze(2)).unsqueeze(-1)
    positions = torch.randn(b, n, 3, generator=generator, dtype=torch.float64) * 1.5 * mask.unsqueeze(-1)
    positions = (positions - positions.sum(1, keepdim=True) / mask.sum(1).view(b, 1, 1)) * mask.unsqueeze(-1)
    c = torch.randn(b, 16, generator=generator, dtype=torch.float64)
    return types, charges, bonds, positions, c, mask


def _random_denoiser() -> MoleculeDenoiser:
    denoiser = MoleculeDenoiser(3, 2, dim=16, pair_dim=8, layers=2, heads=2, num_rbf=8).double()
    with torch.no_grad():  # the zero-initialised gates and coordinate heads would make every test trivial
        for p in denoiser.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return denoiser


def test_denoiser_is_se3_and_permutation_equivariant() -> None:
    denoiser = _random_denoiser()
    types, charges, bonds, positions, c, mask = _denoiser_inputs(torch.Generator().manual_seed(0))
    out = denoiser(types, charges, bonds, positions, c, mask)
    eps = out[3]
    assert eps.abs()[mask].max() > 1e-3  # the coordinate updates are not trivially zero
    m = mask.unsqueeze(-1)
    torch.testing.assert_close((eps * m).sum(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert (eps[~mask] == 0).all()
    torch.testing.assert_close(out[2], out[2].transpose(1, 2))  # symmetric bond logits
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    rotation = rotation * torch.sign(torch.linalg.det(rotation))  # proper rotation
    rotated = denoiser(types, charges, bonds, positions @ rotation.T, c, mask)
    torch.testing.assert_close(rotated[3], eps @ rotation.T, atol=1e-9, rtol=1e-7)
    for before, after in zip(out[:3], rotated[:3]):
        torch.testing.assert_close(after[mask] if after.dim() == 3 else after, before[mask] if before.dim() == 3
                                   else before, atol=1e-9, rtol=1e-7)
    perm = torch.tensor([2, 0, 4, 1, 3])  # molecule 0 has 5 real atoms
    permuted = denoiser(types[:1, perm], charges[:1, perm], bonds[:1][:, perm][:, :, perm], positions[:1, perm],
                        c[:1], mask[:1])
    for before, after in zip(out[:4], permuted[:4]):
        expected = before[:1, perm][:, :, perm] if before.dim() == 4 else before[:1, perm]
        torch.testing.assert_close(after, expected, atol=1e-9, rtol=1e-7)


# --- data and training -------------------------------------------------------------------------------------------
def test_dataset_graphs_round_trip(workdir: Path) -> None:
    data = MoleculeSpectraDataset.from_file(workdir / "spectra.h5")
    assert len(data) == 16 and data.spectra.shape == (16, len(IR_GRID))
    for graph, smiles in zip(data.graphs, data.smiles):
        mol = molecule_from_graph(graph.numbers, graph.charges, graph.bonds, graph.positions)
        assert Chem.MolToSmiles(mol) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
        np.testing.assert_allclose(graph.positions.mean(axis=0), 0.0, atol=1e-12)
    batch = data.batch([0, 14, 3])
    assert batch.num_systems == 3 and batch.mask.sum(1).tolist() == [1, 5, 2] and batch.bonds.shape == (3, 5, 5)
    hyper = DiffSpectra.data_hyperparameters(data)
    assert hyper["species"] == [6, 7, 8] and hyper["max_atoms"] == 5 and hyper["grid_points"] == len(IR_GRID)


def test_noise_has_zero_centre_and_symmetric_bonds(workdir: Path) -> None:
    data = MoleculeSpectraDataset.from_file(workdir / "spectra.h5")
    model = DiffSpectra(**DiffSpectra.data_hyperparameters(data), **TINY)
    batch = data.batch(range(16))
    noise = model._noise(model._one_hot(batch)[:3] + (batch.positions,), batch.mask)
    m = batch.mask.unsqueeze(-1)
    torch.testing.assert_close((noise[3] * m).sum(1), torch.zeros(16, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(noise[2], noise[2].transpose(1, 2))
    assert (noise[0][~batch.mask] == 0).all()


def test_training_loss_falls(trained: Path) -> None:
    with open(trained / "metrics.csv", newline="") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert {"best.pt", "last.pt", "split.json"} <= {p.name for p in trained.iterdir()}


def test_sampling_gives_valid_molecules_of_the_requested_size(workdir: Path, trained: Path) -> None:
    model = load_model(trained / "best.pt", device="cpu")
    data = MoleculeSpectraDataset.from_file(workdir / "spectra.h5")
    generator = torch.Generator().manual_seed(0)
    molecules = model.sample(6, {"spectrum": data.spectra[8], "num_atoms": 3}, generator=generator, steps=10,
                             guidance=2.0)
    assert len(molecules) == 6 and any(m is not None for m in molecules)
    for mol in molecules:
        if mol is not None:
            assert mol.GetNumAtoms() == 3 and mol.GetNumConformers() == 1
            assert Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is not None
    unconditional = model.sample(8, generator=generator, steps=10)
    assert all(m is None or 1 <= m.GetNumAtoms() <= 5 for m in unconditional)
    with pytest.raises(ConfigError, match="num_atoms"):
        model.sample(2, {"num_atoms": 6})
    with pytest.raises(ConfigError, match="spectrum"):
        model.sample(2, {"spectrum": np.zeros(100)})


# --- matsim elucidate --------------------------------------------------------------------------------------------
def test_elucidate_with_a_checkpoint(workdir: Path, trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["elucidate", str(workdir / "spectra.h5"), "-k", "3", "--model",
                              str(trained / "best.pt"), "--samples", "6", "--steps", "5", "--json"], capsys)
    assert code == 0, err
    ranked = json.loads(out)
    assert [entry["id"] for entry in ranked] == [f"m{i}" for i in range(16)]
    for entry in ranked:
        assert set(entry) == {"id", "candidates"} and len(entry["candidates"]) <= 3
        scores = [c["score"] for c in entry["candidates"]]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
        assert all(Chem.MolFromSmiles(c["smiles"]) is not None for c in entry["candidates"])


def test_elucidation_in_chunks_of_spectra(workdir: Path, trained: Path) -> None:
    from matsim.generate.elucidation import elucidate_spectra

    model = load_model(trained / "best.pt", device="cpu")
    spectra = MoleculeSpectraDataset.from_file(workdir / "spectra.h5").spectra[:4]
    one_by_one = elucidate_spectra(model, spectra, k=3, samples=6, seed=5, steps=5)
    # spectrum i alone with seed 5 + i: the default chunk of one spectrum is independent of the other queries
    assert elucidate_spectra(model, spectra[2:3], k=3, samples=6, seed=7, steps=5) == [one_by_one[2]]
    chunked = elucidate_spectra(model, spectra, k=3, samples=6, seed=5, steps=5, spectra_per_batch=3)
    assert len(chunked) == 4 and all(len(c) <= 3 for c in chunked)
    # the last chunk holds spectrum 3 alone, drawn with seed 5 + 3 as one-by-one does
    assert chunked[3] == one_by_one[3]
    with pytest.raises(ConfigError, match="spectra_per_batch"):
        elucidate_spectra(model, spectra, spectra_per_batch=0)


@pytest.mark.parametrize("case", ["missing checkpoint", "spectra without ir", "not a spectra model"])
def test_elucidate_bad_input_is_one_line(case: str, workdir: Path, trained: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    spectra, checkpoint = workdir / "spectra.h5", trained / "best.pt"
    if case == "missing checkpoint":
        checkpoint, expected = workdir / "none.pt", "none.pt"
    elif case == "spectra without ir":
        spectra, expected = workdir / "no_ir.h5", "without ir"
        spectra.write_bytes((workdir / "spectra.h5").read_bytes())
        with h5py.File(spectra, "a") as f:
            del f["ir"]
    else:
        from matsim.models import create, save_model

        checkpoint, expected = workdir / "bamboo.pt", "not conditioned on spectra"
        save_model(create("bamboo", species=[1, 8]), checkpoint)
    code, out, err = run_cli(["elucidate", str(spectra), "--model", str(checkpoint), "--samples", "2", "-k", "1"],
                             capsys)
    assert_one_line_error(code, out, err, expected)
