"""CDVAE: crystal CSV reading, periodic geometry, invariances of encoder and score network, training, resume,
sampling, reconstruction and property optimisation (tiny models on a few perov_5 crystals, CPU)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from matsim.core.errors import ConfigError, InputFileError
from matsim.core.neighbors import neighbor_list
from matsim.datasets.crystals import CrystalDataset
from matsim.models import create, load_model
from matsim.models.cdvae import CDVAE
from matsim.models.layers.periodic import lattice_from_parameters, periodic_radius_graph
from matsim.train.generative import GenerativeTrainer
from matsim.train.generative_config import GenerativeTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PEROV = Path(__file__).resolve().parents[2] / "shared" / "data" / "perov_5" / "pool.csv"
if not PEROV.is_file():
    PEROV = Path("/work/shared/data/perov_5/pool.csv")
TINY = {"hidden": 16, "latent_dim": 16, "encoder_layers": 2, "decoder_layers": 2, "cutoff": 5.0, "num_radial": 8}


def write_rows(path: Path, rows: int, source: Path = PEROV) -> Path:
    """The header and first ``rows`` rows of a CDVAE CSV."""
    csv.field_size_limit(sys.maxsize)
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        kept = [row for _, row in zip(range(rows), reader)]
        fields = reader.fieldnames
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(kept)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdvae")
    write_rows(path / "perov40.csv", 40)
    return path


@pytest.fixture(scope="module")
def dataset(workdir: Path) -> CrystalDataset:
    return CrystalDataset.from_csv(workdir / "perov40.csv", property="heat_all", cache_dir=workdir / "cache")


@pytest.fixture(scope="module")
def model(dataset: CrystalDataset) -> CDVAE:
    torch.manual_seed(0)
    return create("cdvae", **CDVAE.data_hyperparameters(dataset), **TINY).double().eval()


def train_config(workdir: Path, run: str, epochs: int) -> GenerativeTrainConfig:
    return GenerativeTrainConfig.model_validate({
        "run_dir": str(workdir / run), "device": "cpu",
        "model": {"name": "cdvae", "hyperparameters": TINY},
        "data": {"train": str(workdir / "perov40.csv"), "property": "heat_all", "split": {"valid": 8, "seed": 0},
                 "cache_dir": str(workdir / "cache")},
        "optimizer": {"lr": 0.003, "batch_size": 8},
        "schedule": {"type": "cosine", "warmup_epochs": 1},
        "training": {"max_epochs": epochs, "ema_decay": 0.9, "progress": False, "tensorboard": False},
    })


@pytest.fixture(scope="module")
def full_run(workdir: Path) -> Path:
    GenerativeTrainer(train_config(workdir, "full", 4)).fit()
    return workdir / "full"


def rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


# --- data ------------------------------------------------------------------------------------------------------
def test_csv_reading_round_trip_and_cache(workdir: Path, dataset: CrystalDataset) -> None:
    rows = list(csv.DictReader((workdir / "perov40.csv").open(newline="")))
    assert len(dataset) == 40 and dataset.num_atoms().tolist() == [5] * 40
    assert torch.allclose(dataset.properties(), torch.tensor([float(r["heat_all"]) for r in rows], dtype=torch.float64))
    matcher = StructureMatcher()
    for structure, row in zip(dataset.structures(range(5)), rows[:5]):
        original = Structure.from_str(row["cif"], fmt="cif")
        assert structure.composition == original.composition and matcher.fit(structure, original)
    batch = dataset.batch([3, 1])
    assert batch.num_atoms.tolist() == [5, 5] and batch.batch.tolist() == [0] * 5 + [1] * 5
    assert torch.equal(batch.atom_types[:5], dataset.batch([3]).atom_types)
    assert ((batch.frac_coords >= 0) & (batch.frac_coords < 1)).all()
    cached = list((workdir / "cache").glob("perov40-*.pt"))
    assert len(cached) == 1
    again = CrystalDataset.from_csv(workdir / "perov40.csv", property="heat_all", cache_dir=workdir / "cache")
    assert all(torch.equal(again.store[k], dataset.store[k]) for k in dataset.store if k != "property")


def test_csv_errors_are_clear(workdir: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        CrystalDataset.from_csv(workdir / "missing.csv", cache=False)
    with pytest.raises(InputFileError, match="no property column 'band_gap'"):
        CrystalDataset.from_csv(workdir / "perov40.csv", property="band_gap", cache=False)


def test_lattice_matches_pymatgen() -> None:
    params = np.array([[3.0, 4.0, 5.0, 80.0, 95.0, 110.0], [2.5, 2.5, 7.0, 90.0, 90.0, 120.0]])
    ours = lattice_from_parameters(torch.tensor(params[:, :3]), torch.tensor(params[:, 3:]))
    for p, matrix in zip(params, ours):
        assert np.allclose(matrix.numpy(), Lattice.from_parameters(*p).matrix, atol=1e-10)


def test_radius_graph_matches_vesin() -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([[3.1, 4.0, 5.2], [2.6, 2.9, 3.3]], dtype=torch.float64)
    angles = torch.tensor([[75.0, 100.0, 115.0], [90.0, 90.0, 90.0]], dtype=torch.float64)
    lattice = lattice_from_parameters(lengths, angles)
    num_atoms = torch.tensor([4, 3])
    frac = torch.rand(7, 3, generator=gen, dtype=torch.float64)
    edges, vectors = periodic_radius_graph(frac, lattice, num_atoms, cutoff=6.0)
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        cart = frac[start:start + n] @ lattice[b]
        ref_edges, shifts = neighbor_list(cart, lattice[b], torch.ones(3, dtype=torch.bool), 6.0)
        ref = torch.linalg.vector_norm(cart[ref_edges[1]] - cart[ref_edges[0]] + shifts @ lattice[b], dim=1)
        mine = (edges[0] >= start) & (edges[0] < start + n)
        assert torch.allclose(torch.sort(torch.linalg.vector_norm(vectors[mine], dim=1)).values, torch.sort(ref).values)
        start += n
    capped, capped_vec = periodic_radius_graph(frac, lattice, num_atoms, cutoff=6.0, max_neighbors=5)
    assert torch.bincount(capped[0]).max() <= 5
    full_lengths = torch.linalg.vector_norm(vectors, dim=1)
    for atom in range(7):  # the kept neighbours are the nearest ones
        kept = torch.sort(torch.linalg.vector_norm(capped_vec[capped[0] == atom], dim=1)).values
        assert torch.allclose(kept, torch.sort(full_lengths[edges[0] == atom]).values[:5])


# --- invariances -----------------------------------------------------------------------------------------------
def test_encoder_latent_is_invariant(model: CDVAE, dataset: CrystalDataset) -> None:
    batch = dataset.batch([0, 7], dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        lattice = lattice_from_parameters(batch.lengths, batch.angles)
        # rotation of the cell
        rotated, _ = model.encode(batch, lattice=lattice @ rotation(0).T)
        assert torch.allclose(rotated, mu, atol=1e-10)
        # translation = another origin of the unit cell
        moved = dataset.batch([0, 7], dtype=torch.float64)
        moved.frac_coords = torch.remainder(moved.frac_coords + torch.tensor([0.31, -0.2, 0.77]), 1.0)
        assert torch.allclose(model.encode(moved)[0], mu, atol=1e-10)
        # permutation of the atoms of each crystal
        permuted = dataset.batch([0, 7], dtype=torch.float64)
        order = torch.cat([torch.randperm(5), 5 + torch.randperm(5)])
        permuted.frac_coords, permuted.atom_types = permuted.frac_coords[order], permuted.atom_types[order]
        assert torch.allclose(model.encode(permuted)[0], mu, atol=1e-10)
    # another choice of unit cell of the same crystal (a' = a + b) and a 2x1x1 supercell
    structure = dataset.structures([0])[0]
    a, b, c = structure.lattice.matrix
    sheared = Structure(Lattice([a + b, b, c]), structure.species, structure.cart_coords, coords_are_cartesian=True)
    supercell = structure.make_supercell([2, 1, 1], in_place=False)
    others = CrystalDataset.from_structures([sheared, supercell], niggli=False)
    with torch.no_grad():
        mu_others, _ = model.encode(others.batch([0, 1], dtype=torch.float64))
    assert torch.allclose(mu_others, mu[:1].expand(2, -1), atol=1e-8)


def test_score_network_is_equivariant(model: CDVAE, dataset: CrystalDataset) -> None:
    batch = dataset.batch([2, 5], dtype=torch.float64)
    z = torch.randn(2, model.latent_dim, dtype=torch.float64)
    types = model.type_index(batch.atom_types)
    lattice = lattice_from_parameters(batch.lengths, batch.angles)
    noisy = torch.remainder(batch.frac_coords + 0.05 * torch.randn_like(batch.frac_coords), 1.0)
    with torch.no_grad():
        displacement, logits = model.denoise(z, noisy, types, batch.num_atoms, lattice, batch.batch)
        rot = rotation(3)
        displacement_r, logits_r = model.denoise(z, noisy, types, batch.num_atoms, lattice @ rot.T, batch.batch)
        shifted = torch.remainder(noisy + torch.tensor([0.5, 0.25, -0.1], dtype=torch.float64), 1.0)
        displacement_t, logits_t = model.denoise(z, shifted, types, batch.num_atoms, lattice, batch.batch)
    assert torch.allclose(displacement_r, displacement @ rot.T, atol=1e-10)
    assert torch.allclose(logits_r, logits, atol=1e-10)
    assert torch.allclose(displacement_t, displacement, atol=1e-10) and torch.allclose(logits_t, logits, atol=1e-10)
    assert displacement.abs().max() > 1e-6  # not trivially zero


# --- training --------------------------------------------------------------------------------------------------
def test_tiny_cdvae_trains_and_loss_falls(full_run: Path) -> None:
    rows = list(csv.DictReader((full_run / "metrics.csv").open()))
    assert len(rows) == 4
    valid = [float(r["valid_loss"]) for r in rows]
    assert valid[-1] < valid[0]
    assert {"train_coord_loss", "train_type_loss", "train_kl_loss", "train_property_loss"} <= set(rows[0])
    for name in ("best.pt", "last.pt", "resume.pt", "split.json", "config.yaml"):
        assert (full_run / name).is_file()
    loaded = load_model(full_run / "best.pt", device="cpu")
    assert isinstance(loaded, CDVAE) and loaded.property_head is not None and loaded.metadata["epoch"] >= 1


def test_resume_continues_the_run_exactly(workdir: Path, full_run: Path) -> None:
    GenerativeTrainer(train_config(workdir, "parts", 4)).fit(stop_after_epochs=2)
    GenerativeTrainer(train_config(workdir, "parts", 4), resume=True).fit()
    full = list(csv.DictReader((full_run / "metrics.csv").open()))
    parts = list(csv.DictReader((workdir / "parts" / "metrics.csv").open()))
    assert [r["train_loss"] for r in parts] == [r["train_loss"] for r in full]
    a = torch.load(full_run / "resume.pt", weights_only=True)["model"]
    b = torch.load(workdir / "parts" / "resume.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = train_config(workdir, "parts", 5)
    changed.optimizer.lr = 0.01
    with pytest.raises(ConfigError, match="optimizer.lr"):
        GenerativeTrainer(changed, resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        GenerativeTrainer(train_config(workdir, "parts", 4))


# --- sampling --------------------------------------------------------------------------------------------------
def test_sampling_gives_the_decoded_counts_and_lattices(model: CDVAE) -> None:
    settings = {"n_levels": 3, "steps_per_level": 2}
    samples = model.sample(5, generator=torch.Generator().manual_seed(7), **settings)
    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        num_atoms, lengths, angles, _ = model.decode_stats(z)
    assert len(samples) == 5 and all(s is not None for s in samples)
    for structure, n, a, b in zip(samples, num_atoms, lengths, angles):
        assert len(structure) == int(n)
        assert np.allclose(structure.lattice.abc, a.numpy(), atol=1e-6)
        assert np.allclose(structure.lattice.angles, b.numpy(), atol=1e-6)
        assert {site.specie.Z for site in structure} <= set(model.species.tolist())
    again = model.sample(5, generator=torch.Generator().manual_seed(7), **settings)
    assert all(np.allclose(x.frac_coords, y.frac_coords) for x, y in zip(samples, again))


def test_conditions_reconstruction_and_property_optimisation(model: CDVAE, dataset: CrystalDataset) -> None:
    settings = {"n_levels": 2, "steps_per_level": 2}
    assert [len(s) for s in model.sample(3, condition={"num_atoms": 3}, **settings)] == [3, 3, 3]
    formula = dataset.structures([0])[0].composition.formula
    assert all(s.composition.formula == formula for s in model.sample(2, condition={"composition": formula},
                                                                      **settings))
    with pytest.raises(ConfigError, match="condition.temperature: unknown key"):
        model.sample(1, condition={"temperature": 300})
    with pytest.raises(ConfigError, match="steps_per_levels: unknown key"):
        model.sample(1, steps_per_levels=3)
    batch = dataset.batch([0, 1, 2], dtype=torch.float64)
    rebuilt = model.reconstruct(batch, force_atom_types=True, **settings)
    assert [s.composition for s in rebuilt] == [s.composition for s in dataset.structures([0, 1, 2])]
    with torch.no_grad():
        mu, _ = model.encode(batch)
    before = model.predict_property(mu)
    after = model.predict_property(model.optimize_latent(mu, steps=20, lr=0.1))
    assert (after < before).all()
    assert len(model.optimize(batch, property_steps=5, **settings)) == 3
    assert all(p.grad is None for p in model.parameters())
