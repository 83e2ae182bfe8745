"""UniMat: the periodic-table grid representation (exact round trips on perov_5 and carbon_24), training through
``matsim train``, composition-conditional and few-step sampling, ``matsim generate`` with a condition, and user
errors (tiny model on a few perov_5 crystals, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from matsim.cli.app import main
from matsim.core.errors import ConfigError, StructureError
from matsim.datasets.crystals import CrystalDataset
from matsim.datasets.unimat import (
    cell_elements,
    grid_cell,
    grid_to_structures,
    max_atoms_per_element,
    structures_to_grid,
    to_grid,
)
from matsim.models import load_model
from matsim.models.unimat import UniMat
from test_cdvae import PEROV, write_rows
from test_generate import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

CARBON = PEROV.parents[1] / "carbon_24" / "pool.csv"
TINY = {"channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_heads": 2, "timesteps": 100}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unimat")
    write_rows(path / "perov200.csv", 200)
    write_rows(path / "carbon100.csv", 100, source=CARBON)
    write_rows(path / "train.csv", 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATSIM_CACHE_DIR", str(path / "cache"))
        yield path


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """A tiny UniMat trained for 6 epochs on 26 perov_5 crystals through ``matsim train``."""
    config = {
        "run_dir": "run", "device": "cpu", "seed": 0,
        "model": {"name": "unimat", "hyperparameters": TINY},
        "data": {"train": "train.csv", "split": {"valid": 6, "seed": 0}},
        "optimizer": {"lr": 0.003, "batch_size": 8},
        "schedule": {"type": "cosine", "warmup_epochs": 1},
        "training": {"max_epochs": 6, "ema_decay": 0.5, "progress": False, "tensorboard": False},
    }
    (workdir / "train.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(workdir / "train.yaml")])
    assert exit_info.value.code in (0, None)
    return workdir / "run"


@pytest.fixture(scope="module")
def model(trained: Path) -> UniMat:
    return load_model(trained / "best.pt", device="cpu")


@pytest.fixture(scope="module")
def formula(workdir: Path) -> str:
    """The formula of a training crystal (its elements are among the model's species)."""
    return CrystalDataset.from_csv(workdir / "train.csv").structures([0])[0].composition.formula


# --- representation --------------------------------------------------------------------------------------------
def test_grid_layout() -> None:
    cells = {"H": (0, 0), "He": (0, 17), "O": (1, 15), "Ti": (3, 3), "Cs": (5, 0), "Hf": (5, 3), "La": (7, 2),
             "Lu": (7, 16), "Ac": (8, 2), "Lr": (8, 16), "Rf": (6, 3), "Og": (6, 17)}
    for symbol, cell in cells.items():
        assert grid_cell(Composition(symbol).elements[0].Z) == cell, symbol
    table = cell_elements()
    assert sorted(table[table > 0].tolist()) == list(range(1, 119))
    with pytest.raises(StructureError, match="1-118"):
        grid_cell(0)


@pytest.mark.parametrize(("name", "slots"), [("perov200.csv", 3), ("carbon100.csv", 24)])
def test_round_trip_is_exact(workdir: Path, name: str, slots: int) -> None:
    dataset = CrystalDataset.from_csv(workdir / name)
    structures = dataset.structures()
    assert max_atoms_per_element(dataset) <= slots
    grid = structures_to_grid(structures, slots)
    assert grid.frac_coords.shape == (len(structures), 9, 18, slots, 3)
    occupancy = grid.occupancy
    assert occupancy.sum(dim=(1, 2, 3)).tolist() == dataset.num_atoms().tolist()
    assert torch.equal(occupancy, torch.cummin(occupancy.int(), dim=-1).values.bool())  # each element fills a prefix
    coords = grid.frac_coords[occupancy]
    assert bool(((coords >= 0) & (coords < 1)).all()) and bool((grid.frac_coords[~occupancy] == 0).all())
    x = grid.frac_coords[..., 0]  # canonical order: x never decreases along an element's occupied slots
    both = occupancy[..., 1:] & occupancy[..., :-1]
    assert bool((x[..., 1:][both] >= x[..., :-1][both]).all())

    matcher = StructureMatcher()
    for original, back in zip(structures, grid_to_structures(grid)):
        assert np.allclose(back.lattice.parameters, original.lattice.parameters, atol=1e-6, rtol=0)
        assert np.allclose(back.lattice.matrix, original.lattice.matrix, atol=1e-6, rtol=0)
        assert sorted(back.atomic_numbers) == sorted(original.atomic_numbers)
        for z in set(original.atomic_numbers):
            a = _sorted_sites(original, z)
            b = _sorted_sites(back, z)
            assert np.abs((a - b + 0.5) % 1.0 - 0.5).max() < 1e-6
        assert matcher.fit(back, original)


def _sorted_sites(structure: Structure, z: int) -> np.ndarray:
    frac = np.mod(np.array([s.frac_coords for s in structure if s.specie.Z == z]), 1.0)
    frac[frac >= 1.0] = 0.0
    return frac[np.lexsort(frac.T[::-1])]


def test_grid_is_permutation_invariant_and_shift_wraps(workdir: Path) -> None:
    dataset = CrystalDataset.from_csv(workdir / "carbon100.csv")
    structure = dataset.structures([3])[0]
    order = np.random.default_rng(0).permutation(len(structure))
    permuted = Structure(structure.lattice, [structure[i].specie for i in order], structure.frac_coords[order])
    a, b = structures_to_grid([structure], 24), structures_to_grid([permuted], 24)
    assert torch.equal(a.occupancy, b.occupancy) and torch.equal(a.frac_coords, b.frac_coords)
    batch = dataset.batch([3], dtype=torch.float64)
    shift = torch.tensor([[0.3, 0.6, 0.95]], dtype=torch.float64)
    shifted = to_grid(batch, 24, shift)
    expected = torch.remainder(batch.frac_coords + shift, 1.0)
    got = shifted.frac_coords[shifted.occupancy]
    assert torch.equal(shifted.occupancy, a.occupancy)
    assert torch.allclose(got[np.lexsort(got.numpy().T[::-1])], expected[np.lexsort(expected.numpy().T[::-1])])


def test_crystals_that_do_not_fit_are_clear_errors(workdir: Path) -> None:
    structure = CrystalDataset.from_csv(workdir / "carbon100.csv").structures([0])[0]
    with pytest.raises(StructureError, match=rf"has {len(structure)} C atoms; the representation has 2 slots"):
        structures_to_grid([structure], 2)


def test_wrap_tolerance_stores_face_sites_as_zero() -> None:
    from pymatgen.core import Lattice

    structure = Structure(Lattice.cubic(4.0), ["O", "O"], [[0.9999, 0.5, 0.0], [0.5, 0.0, 0.5]])
    batch = CrystalDataset.from_structures([structure], niggli=False).batch([0], dtype=torch.float64)
    exact = to_grid(batch, 2)
    snapped = to_grid(batch, 2, wrap_tolerance=1e-3)
    o = grid_cell(8)
    assert exact.frac_coords[0][o][1, 0] == pytest.approx(0.9999)  # sorted last: x = 0.9999
    assert snapped.frac_coords[0][o][0].tolist() == [0.0, 0.5, 0.0]  # the same site, now first
    assert snapped.frac_coords[0][o][1].tolist() == [0.5, 0.0, 0.5]


def test_coordinates_live_on_the_unit_circle(workdir: Path) -> None:
    """encode → decode is exact, a face site stored as 0 or as 0.99999 is one point, empty slots are (0, 0)."""
    model = UniMat(species=[8, 22, 38], slots=3, **TINY).double()
    batch = CrystalDataset.from_csv(workdir / "perov200.csv").batch(range(20), dtype=torch.float64)
    grid = to_grid(batch, 3)
    x, lattice = model.encode(grid)
    assert x.shape == (20, 7, 9, 18, 3)
    occupied = grid.occupancy.unsqueeze(1).expand(-1, 6, -1, -1, -1)
    assert bool((x[:, 1:][~occupied] == 0).all())
    radius = x[:, 1:4] ** 2 + x[:, 4:] ** 2
    assert torch.allclose(radius[occupied[:, :3]], torch.ones(()).double())
    back = model.decode(x, lattice, grid.occupancy)
    assert torch.equal(back.occupancy, grid.occupancy)
    assert torch.allclose(back.lengths, grid.lengths) and torch.allclose(back.angles, grid.angles)
    delta = back.frac_coords[grid.occupancy] - grid.frac_coords[grid.occupancy]
    assert float(((delta + 0.5) % 1.0 - 0.5).abs().max()) < 1e-9
    near_one = grid.frac_coords.clone()
    near_one[grid.occupancy] = torch.where(near_one[grid.occupancy] == 0, 0.99999, near_one[grid.occupancy])
    moved, _ = model.encode(type(grid)(near_one, grid.occupancy, grid.lengths, grid.angles))
    assert float((moved - x).abs().max()) < 1e-4


def test_coordinate_loss_ignores_empty_slots(workdir: Path) -> None:
    """What the network predicts for the coordinates of empty slots does not change the loss; occupied ones do."""
    torch.manual_seed(0)
    model = UniMat(species=[8, 22, 38], slots=3, **TINY)
    batch = CrystalDataset.from_csv(workdir / "perov200.csv").batch(range(8))
    occupancy = to_grid(batch, 3).occupancy.unsqueeze(1)

    def loss_with(coordinates_in: torch.Tensor, value: float) -> dict[str, torch.Tensor]:
        def network(x, condition, lattice, t, previous_x0=None):
            eps = torch.zeros_like(x)
            eps[:, 1:] = torch.where(coordinates_in, value, 0.0)
            return eps, torch.zeros_like(lattice)
        model.network.forward = network
        torch.manual_seed(1)
        return model.loss(batch)

    base = loss_with(occupancy, 0.0)
    assert loss_with(~occupancy, 7.0)["coord"] == base["coord"]
    assert loss_with(occupancy, 7.0)["coord"] > base["coord"] + 10.0
    assert loss_with(~occupancy, 7.0)["occupancy"] == base["occupancy"]


def _record_network_calls(model: UniMat) -> list[torch.Tensor | None]:
    """Wrap ``model.network`` so that each call's ``previous_x0`` (self-conditioning input) is recorded."""
    seen: list[torch.Tensor | None] = []
    forward = model.network.forward

    def recording(x, condition, lattice, t, previous_x0=None):
        seen.append(None if previous_x0 is None else previous_x0.clone())
        return forward(x, condition, lattice, t, previous_x0)
    model.network.forward = recording
    return seen


def test_self_conditioning_feeds_back_the_previous_estimate(workdir: Path) -> None:
    """With ``self_condition`` the network reads 7 more channels; training gives about half of the crystals a
    first pass's estimate (the rest zeros); sampling gives step k the clipped, occupancy-weighted x0 of step k-1."""
    torch.manual_seed(0)
    model = UniMat(species=[8, 22, 38], slots=3, self_condition=True, **TINY)
    assert model.network.conv_in.in_channels == 7 + 1 + 7
    assert UniMat(species=[8], slots=3, **TINY).network.conv_in.in_channels == 8
    torch.nn.init.normal_(model.network.conv_out.weight, std=0.1)  # zero at init: no gradient would reach conv_in
    batch = CrystalDataset.from_csv(workdir / "perov200.csv").batch(range(64))
    seen = _record_network_calls(model)
    model.loss(batch)["loss"].backward()
    assert len(seen) == 2 and seen[0] is None
    fed = seen[1].flatten(1).abs().amax(dim=1) > 0
    assert 16 < int(fed.sum()) < 48 and float(seen[1].abs().max()) <= 1.0
    assert model.network.conv_in.weight.grad[:, 8:].abs().sum() > 0

    seen.clear()
    model.eval()
    samples = model.sample(2, generator=torch.Generator().manual_seed(0), steps=4, eta=0.0)
    assert len(samples) == 2 and len(seen) == 4 and seen[0] is None
    for previous in seen[1:]:
        assert previous.shape == (2, 7, 9, 18, 3) and float(previous.abs().max()) <= 1.0
        empty = previous[:, :1] <= -1.0  # a slot sure to be empty has the empty marker (0, 0) as coordinates
        assert bool((previous[:, 1:] * empty).eq(0).all())
    assert not torch.equal(seen[1], seen[2])


# --- training and sampling -------------------------------------------------------------------------------------
def test_trains_through_matsim_train_and_loss_falls(trained: Path, model: UniMat) -> None:
    rows = [line.split(",") for line in (trained / "metrics.csv").read_text().strip().splitlines()]
    header, rows = rows[0], rows[1:]
    assert len(rows) == 6 and {"train_occupancy_loss", "train_coord_loss", "train_lattice_loss"} <= set(header)
    loss = [float(row[header.index("train_loss")]) for row in rows]
    assert loss[-1] < 0.85 * loss[0], loss
    assert model.slots == 3 and 8 in model.species_list and model.hyperparameters["channels"] == 8


def test_conditional_sampling_gives_the_requested_composition(model: UniMat, formula: str) -> None:
    target = Composition(formula)
    for settings in ({"steps": 4}, {"steps": 4, "eta": 0.0, "guidance": 2.0}):
        samples = model.sample(3, condition={"composition": formula}, generator=torch.Generator().manual_seed(1),
                               **settings)
        assert len(samples) == 3
        for structure in samples:
            assert structure is not None and structure.composition == target
            assert min(structure.lattice.abc) >= 1.0


def test_few_step_sampler_runs_and_is_reproducible(model: UniMat) -> None:
    runs = [model.sample(3, generator=torch.Generator().manual_seed(5), steps=3, eta=0.0) for _ in range(2)]
    assert len(runs[0]) == 3
    assert all(s is None or isinstance(s, Structure) for s in runs[0])
    assert [None if s is None else s.as_dict() for s in runs[0]] == [None if s is None else s.as_dict()
                                                                     for s in runs[1]]
    allowed = set(model.species_list)
    assert all(set(s.atomic_numbers) <= allowed for s in runs[0] if s is not None)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"composition": "Xx2O"}, "cannot read the formula"),
        ({"composition": "XeF2"}, "Xe not among the model's species"),
        ({"composition": "O9"}, "9 O atoms do not fit the model's 3 slots per element"),
        ({"composition": "O1.5"}, "whole, positive numbers"),
        ({"num_atoms": 5}, "condition.num_atoms: unknown key"),
    ],
    ids=["unreadable", "foreign-element", "too-many", "fractional", "unknown-key"],
)
def test_bad_conditions_are_clear_errors(model: UniMat, condition: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model.sample(1, condition=condition, steps=2)


def test_generate_with_a_composition_condition(workdir: Path, trained: Path, formula: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = {"checkpoint": "run/best.pt", "num_samples": 4, "batch_size": 2, "seed": 0, "device": "cpu",
              "sampler": {"steps": 3, "eta": 0.0}, "condition": {"composition": formula}}
    (workdir / "generate.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["generate", str(workdir / "generate.yaml"), "--output", str(workdir / "out")], capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "out" / "metrics.json").read_text())
    assert metrics["n_written"] == 4 and metrics["checkpoint"]["model"] == "UniMat"
    assert metrics["sampling"]["condition"] == {"composition": formula} and metrics["sampling"]["settings"]["steps"] == 3
    for path in sorted((workdir / "out" / "structures").glob("*.cif")):  # an untrained model may overlap atoms,
        line = next(t for t in path.read_text().splitlines() if t.startswith("_chemical_formula_sum"))  # so no parse
        assert Composition(line.split(maxsplit=1)[1].strip("'")) == Composition(formula)


def test_per_sample_compositions_are_each_honoured(model: UniMat, workdir: Path) -> None:
    formulas = [s.composition.formula for s in CrystalDataset.from_csv(workdir / "train.csv").structures([0, 1, 2])]
    samples = model.sample(3, condition={"composition": formulas}, generator=torch.Generator().manual_seed(2), steps=3)
    assert [s.composition for s in samples] == [Composition(f) for f in formulas]
    with pytest.raises(ConfigError, match="2 formulas for 3 samples"):
        model.sample(3, condition={"composition": formulas[:2]}, steps=2)
    with pytest.raises(ConfigError, match="Xe not among the model's species"):
        model.sample(2, condition={"composition": [formulas[0], "XeF2"]}, steps=2)


def _cif_composition(path: Path) -> Composition:
    line = next(t for t in path.read_text().splitlines() if t.startswith("_chemical_formula_sum"))
    return Composition(line.split(maxsplit=1)[1].strip("'"))


def test_generate_takes_the_random_search_composition_plan(workdir: Path, trained: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``compositions_from`` conditions sample i on the i-th composition the random-search baseline draws."""
    from matsim.generate.random_search import dataset_compositions, draw_compositions

    config = {"checkpoint": "run/best.pt", "num_samples": 5, "batch_size": 2, "seed": 3, "device": "cpu",
              "sampler": {"steps": 3, "eta": 0.0}, "compositions_from": "train.csv"}
    (workdir / "plan.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["generate", str(workdir / "plan.yaml"), "--output", str(workdir / "plan-out")], capsys)
    assert code == 0, err
    plan = draw_compositions(dataset_compositions(workdir / "train.csv"), 5, seed=3)
    paths = sorted((workdir / "plan-out" / "structures").glob("*.cif"))
    assert [_cif_composition(p) for p in paths] == plan
    metrics = json.loads((workdir / "plan-out" / "metrics.json").read_text())
    assert metrics["compositions"]["drawn"] == "uniformly with replacement"

    config["condition"] = {"composition": "SrTiO3"}
    (workdir / "both.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["generate", str(workdir / "both.yaml"), "--output", str(workdir / "both-out")], capsys)
    assert code != 0 and "both fix the composition" in err
