"""Density alignment (``matsim train align``): the pressure correction and its sign, the stress-target shift, the
finite-difference compressibility, molecule-preserving box scaling, mixed data with missing stress labels (masked
loss, training), a tiny end-to-end alignment on CPU that is killed during fine-tuning and resumed, clean config
errors, and the three forms of ``matsim train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import matsim.models
from matsim.cli.app import main
from matsim.core.errors import CheckpointError, ConfigError
from matsim.core.graph import AtomGraph
from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3
from matsim.datasets.atoms import DataKeys, MissingKeyError
from matsim.datasets.graphs import GraphDataset
from matsim.md.builder import species_atoms
from matsim.md.species import get_species
from matsim.models import load_model
from matsim.models.forcefield import ForceField
from matsim.train import align as align_module
from matsim.train.align import align
from matsim.train.align_config import load_align_config
from matsim.train.align_physics import (
    clamp_compressibility,
    finite_difference_compressibility,
    pressure_correction_bar,
    scale_to_density,
    shifted_stress,
    stage_average,
)
from matsim.train.config import load_train_config
from matsim.train.evaluate import ErrorAccumulator
from matsim.train.losses import WeightedLoss
from matsim.train.trainer import Trainer
from test_train import set_dotted

pytestmark = [pytest.mark.filterwarnings("ignore:the training compositions determine only"),
              pytest.mark.usefixtures("one_thread")]

REPO = Path(__file__).resolve().parents[1]
TINY = dict(cutoff=4.0, species=[1, 6, 8], channels=8, num_layers=1, num_heads=2, num_radial=6, radial_hidden=16,
            charges=False)
EXPERIMENT_CSV = """solvent,abbrev,T_C,density_g_cm3,viscosity_cP,source
dimethyl carbonate,DMC,25,1.063,0.59,"Xu 2004 Table 1"
vinylene carbonate,VC,,1.355,,"vendor"
"""


# --------------------------------------------------------------------------------------------- pure functions


def test_pressure_correction_formula_and_sign() -> None:
    # too dense by 10 %: κ = 1e-4 1/bar → ΔP = 0.1 / 1e-4 = +1000 bar (labels push outward)
    assert pressure_correction_bar(1.10, 1.00, 1e-4) == pytest.approx(1000.0, rel=1e-12)
    assert pressure_correction_bar(0.95, 1.00, 1e-4) == pytest.approx(-500.0, rel=1e-12)  # too light: pull in
    assert pressure_correction_bar(1.2, 1.2, 7e-5) == 0.0
    # linear response closes the loop: a liquid of compressibility κ at ρ_model, pressed by ΔP, reaches ρ_exp
    rho_model, rho_exp, kappa = 1.2, 1.1, 8e-5
    dp = pressure_correction_bar(rho_model, rho_exp, kappa)
    assert rho_model - rho_exp * kappa * dp == pytest.approx(rho_exp, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        pressure_correction_bar(1.1, 1.0, 0.0)


def test_stress_target_is_lowered_by_the_correction_in_eV_per_A3() -> None:
    stress = np.array([[1e-3, 2e-4, 0.0], [2e-4, -5e-4, 1e-5], [0.0, 1e-5, 3e-4]])
    target = shifted_stress(stress, 1000.0)
    assert np.allclose(np.diag(stress - target), 1000.0 * units.bar, rtol=0, atol=1e-18)
    assert 1000.0 * units.bar == pytest.approx(6.2415e-4, rel=1e-4)  # 1 kbar in eV/Å³
    assert np.array_equal(target - np.diag(np.diag(target)), stress - np.diag(np.diag(stress)))
    pressure = lambda s: -np.trace(s) / 3.0 / units.bar  # noqa: E731 - ASE's sign, bar
    assert pressure(target) - pressure(stress) == pytest.approx(1000.0, rel=1e-10)


def test_finite_difference_compressibility_on_analytic_equations_of_state() -> None:
    rho0, kappa, strain = 1.1, 7.5e-5, 0.02
    linear = lambda rho: 1.0 + (rho / rho0 - 1.0) / kappa  # noqa: E731 - P(ρ) with (1/ρ0) dρ/dP = κ
    estimate = finite_difference_compressibility(linear(rho0 * (1 - strain)), linear(rho0 * (1 + strain)), strain)
    assert estimate == pytest.approx(kappa, rel=1e-12)
    # a curved equation of state (Tait-like): the central difference is second-order accurate in the strain
    curved = lambda rho: ((rho / rho0) ** 8 - 1.0) / (8 * kappa)  # noqa: E731 - (1/ρ) dρ/dP = κ at ρ0
    errors = [abs(finite_difference_compressibility(curved(rho0 * (1 - d)), curved(rho0 * (1 + d)), d) / kappa - 1)
              for d in (0.02, 0.01)]
    assert errors[0] < 0.01 and errors[0] / errors[1] == pytest.approx(4.0, rel=0.05)
    assert finite_difference_compressibility(100.0, 100.0, strain) == math.inf
    assert clamp_compressibility(8e-5, 2e-5, 5e-4) == (8e-5, None)
    value, note = clamp_compressibility(1e-6, 2e-5, 5e-4)
    assert value == 2e-5 and "below" in note
    value, note = clamp_compressibility(-3e-4, 2e-5, 5e-4)
    assert value == 5e-4 and "not positive" in note
    assert clamp_compressibility(math.inf, 2e-5, 5e-4)[0] == 5e-4


def test_scaling_to_a_density_moves_whole_molecules() -> None:
    a, b = molecule("H2O"), molecule("CO2")
    b.translate([0.0, 0.0, -1.3])  # CO2 across the lower face of the box: split by the boundary
    a.translate([4.0, 4.0, 4.0])
    box = a + b
    box.set_cell([8.0, 8.0, 8.0])
    box.pbc = True
    box.arrays["mol_id"] = np.array([0, 0, 0, 1, 1, 1])
    box.wrap()
    scaled = scale_to_density(box, 0.8 * float(box.get_masses().sum() / box.get_volume()) * AMU_PER_A3_TO_G_PER_CM3)
    density = lambda atoms: atoms.get_masses().sum() / atoms.get_volume()  # noqa: E731
    assert density(scaled) == pytest.approx(0.8 * density(box), rel=1e-12)
    for mol in (0, 1):
        members = np.flatnonzero(box.arrays["mol_id"] == mol)
        before = box.get_distances(members[0], members, mic=True, vector=True)
        after = scaled.get_distances(members[0], members, mic=True, vector=True)
        assert np.allclose(before, after, atol=1e-10)  # rigid translation of each molecule
    assert "mol_id" in scaled.arrays and scaled.cell.lengths()[0] == pytest.approx(8.0 * 0.8 ** (-1 / 3))


# --------------------------------------------------------------------------------------- mixed data, masked loss


def _labelled(atoms: Atoms, rng: np.random.Generator, stress: bool) -> Atoms:
    atoms = atoms.copy()
    results = {"energy": float(rng.normal()), "forces": rng.normal(size=(len(atoms), 3))}
    if stress:
        results["stress"] = rng.normal(scale=1e-3, size=(3, 3))
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _mixed_file(path: Path, n_boxes: int = 3, n_molecules: int = 3) -> Path:
    """Periodic CO2 boxes with stress and isolated CO2 molecules without, interleaved."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(max(n_boxes, n_molecules)):
        if i < n_boxes:
            box = molecule("CO2")
            box.set_cell([5.0 + 0.2 * i] * 3)
            box.pbc = True
            box.rattle(0.05, seed=i)
            frames.append(_labelled(box, rng, stress=True))
        if i < n_molecules:
            gas = molecule("CO2")
            gas.rattle(0.05, seed=10 + i)
            frames.append(_labelled(gas, rng, stress=False))
    ase.io.write(path, frames, format="extxyz")
    return path


def test_masked_stress_loss_ignores_unlabelled_frames_exactly(tmp_path: Path) -> None:
    path = _mixed_file(tmp_path / "mixed.extxyz")
    targets = ("energy", "forces", "stress")
    with pytest.raises(MissingKeyError, match=r"frame 1 has no stress under key 'stress'"):
        GraphDataset.from_file(path, 3.0, targets=targets, cache=False)
    data = GraphDataset.from_file(path, 3.0, keys=DataKeys(missing_targets="skip"), targets=targets, cache=False)
    assert data.labelled("stress").tolist() == [True, False] * 3 and data.labelled("forces").all()
    batch = data.batch(range(len(data)))
    assert batch.ref_stress_mask.tolist() == [True, False] * 3 and not hasattr(batch, "ref_forces_mask")
    assert torch.isnan(batch.ref_stress[1]).all() and torch.isfinite(batch.ref_stress[0]).all()
    collated = GraphDataset.collate([data[i] for i in range(len(data))])
    assert torch.equal(collated.ref_stress_mask, batch.ref_stress_mask)
    labelled = [0, 2, 4]
    gen = torch.Generator().manual_seed(0)
    pred_stress = torch.randn(6, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    for kind in ("mse", "huber"):
        loss = WeightedLoss({"stress": 1.0}, kind, huber_delta=5e-4)
        value = loss.terms({"stress": pred_stress}, batch)["stress"]
        subset = data.batch(labelled)
        expected = loss.terms({"stress": pred_stress[labelled]}, subset)["stress"]
        assert not hasattr(subset, "ref_stress_mask") or bool(subset.ref_stress_mask.all())
        assert torch.allclose(value, expected, rtol=1e-14, atol=0)
        (grad,) = torch.autograd.grad(value, pred_stress)
        assert torch.isfinite(grad).all() and torch.all(grad[[1, 3, 5]] == 0) and torch.any(grad[0] != 0)
    # a batch without any stress label contributes exactly 0
    none = WeightedLoss({"stress": 1.0}).terms({"stress": pred_stress[[1, 3]]}, data.batch([1, 3]))["stress"]
    assert none.item() == 0.0
    # energies of all frames are there (least squares works); a file without any stress label is an error
    assert len(data.energies()) == 6 and len(data.forces()) == 6
    gas_only = tmp_path / "gas.extxyz"
    ase.io.write(gas_only, [f for f in ase.io.read(path, ":") if not f.pbc.any()], format="extxyz")
    with pytest.raises(MissingKeyError, match="no frame has stress"):
        GraphDataset.from_file(gas_only, 3.0, keys=DataKeys(missing_targets="skip"), targets=targets, cache=False)


def test_error_metrics_of_a_mixed_set_count_labelled_frames_only(tmp_path: Path) -> None:
    """matsim evaluate on a mixed set: stress errors over the boxes only (not NaN), equal to the boxes alone."""
    data = GraphDataset.from_file(_mixed_file(tmp_path / "mixed.extxyz"), 3.0, keys=DataKeys(missing_targets="skip"),
                                  targets=("energy", "forces", "stress"), cache=False)
    gen = torch.Generator().manual_seed(1)

    def metrics(indices: list[int]) -> dict[str, float]:
        batch = data.batch(indices)
        pred = {"energy": torch.randn(len(indices), dtype=torch.float64, generator=gen),
                "forces": torch.randn(batch.num_nodes, 3, dtype=torch.float64, generator=gen),
                "stress": torch.randn(len(indices), 3, 3, dtype=torch.float64, generator=gen) * 1e-3}
        accumulator = ErrorAccumulator()
        accumulator.add(pred, batch)
        return accumulator.metrics(), pred, batch

    mixed, pred, batch = metrics(list(range(len(data))))
    assert math.isfinite(mixed["stress_rmse_meV_per_A3"]) and mixed["n_structures"] == 6
    boxes = [0, 2, 4]
    expected = 1000.0 * math.sqrt(float(((pred["stress"][boxes] - batch.ref_stress[boxes]) ** 2).mean()))
    assert mixed["stress_rmse_meV_per_A3"] == pytest.approx(expected, rel=1e-12)


def _train_yaml(root: Path, run: str, train: Path, **extra) -> Path:
    config = {
        "run_dir": run, "seed": 0, "dtype": "float64", "device": "cpu",
        "model": {"name": "bamboo", "hyperparameters": {k: v for k, v in TINY.items() if k != "species"}},
        "data": {"train": str(train), "split": {"valid": 2, "seed": 0}, "cache": False,
                 "keys": {"missing_targets": "skip"}},
        "loss": {"energy": 1.0, "forces": 10.0, "stress": 1000.0},
        "optimizer": {"lr": 0.01, "batch_size": 2},
        "training": {"max_epochs": 2, "progress": False, "tensorboard": False},
    }
    set_dotted(config, extra)
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_mixed_set_trains_and_the_cuda_graph_step_takes_masks(tmp_path: Path) -> None:
    path = _mixed_file(tmp_path / "mixed.extxyz")
    table = Trainer(load_train_config(_train_yaml(tmp_path, "mixed", path))).fit()
    rows = (tmp_path / "mixed" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert math.isfinite(float(last["train_loss"])) and math.isfinite(float(last["valid_loss"]))
    assert table["validation"]["n_structures"] == 2
    # molecules only, some without forces: the fixed-shape (CUDA-graph) step, eager on CPU, uses the masks as is
    rng = np.random.default_rng(1)
    frames = []
    for i in range(6):
        gas = molecule("CO2")
        gas.rattle(0.05, seed=i)
        frame = _labelled(gas, rng, stress=False)
        if i % 2:
            frame.calc = SinglePointCalculator(frame, energy=frame.calc.results["energy"])
        frames.append(frame)
    ase.io.write(tmp_path / "gas.extxyz", frames, format="extxyz")
    config = load_train_config(_train_yaml(tmp_path, "graph", tmp_path / "gas.extxyz",
                                           **{"loss": {"energy": 1.0, "forces": 10.0}, "training.cuda_graph": True}))
    trainer = Trainer(config)
    assert trainer.captured is not None and "ref_forces_mask" in trainer.captured.static.target_fields
    trainer.fit()
    rows = (tmp_path / "graph" / "metrics.csv").read_text().splitlines()
    assert math.isfinite(float(dict(zip(rows[0].split(","), rows[-1].split(",")))["train_loss"]))


# ------------------------------------------------------------------------------------------ tiny end-to-end run


def _tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    return matsim.models.save_model(matsim.models.create("bamboo", **TINY), path)


def _replay(path: Path, model: Path) -> Path:
    """Three gas-phase DMC molecules labelled by ``model`` under E_dft / F_dft (no stress)."""
    from matsim.calculator import MatSimCalculator

    calc = MatSimCalculator(model, device="cpu", dtype="float64")
    frames = []
    for seed in range(3):
        atoms = species_atoms(get_species("DMC"), seed=seed)
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        atoms.rattle(0.02, seed=seed)
        atoms.calc = calc
        atoms.info["E_dft"] = atoms.get_potential_energy()
        atoms.arrays["F_dft"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def smoke_config(root: Path, **changes) -> Path:
    """The tiny CPU alignment: 6 DMC molecules (72 atoms), a random tiny bamboo, a few MD steps, 2 epochs."""
    model = root / "tiny.pt"
    if not model.exists():
        _tiny_model(model)
        _replay(root / "replay.extxyz", model)
    config = {
        "run_dir": "align", "model": "tiny.pt", "device": "cpu", "seed": 0,
        "liquids": [{"name": "DMC", "temperature_K": 300.0, "density_g_cm3": 0.95,
                     "system": {"solvents": [{"name": "DMC"}], "n_molecules": 6, "seed": 1}}],
        "md": {"timestep_fs": 0.5, "minimise_steps": 3, "npt_steps": 12, "nvt_steps": 12, "frames": 4,
               "thermo_every": 1, "dtype": "float64"},
        "compressibility": {"steps": 8, "strain": 0.05},
        "replay": {"file": "replay.extxyz", "energy_key": "E_dft", "forces_key": "F_dft"},
        "finetune": {"epochs": 4, "lr": 0.01, "batch_size": 2, "ema_decay": None, "dtype": "float64",
                     "valid_fraction": 0.25, "loss": {"energy": 1.0, "forces": 1.0, "stress": 1e5}},
        "tolerance_g_cm3": 0.001, "max_iterations": 1,
    }
    config.update(changes)
    path = root / "align.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class _Killed(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One alignment iteration of the smoke config, killed during fine-tuning and resumed with the MD calls counted."""
    root = tmp_path_factory.mktemp("align")
    config = load_align_config(smoke_config(root))

    def killed(self, *args, **kwargs):
        raise _Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", killed)
        with pytest.raises(_Killed):
            align(config)
    partial = json.loads((root / "align" / "alignment.json").read_text())
    calls: list[str] = []
    real = align_module.run_md

    def counted(md_config, directory, **kwargs):
        calls.append(str(Path(directory).relative_to(root / "align")))
        return real(md_config, directory, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(align_module, "run_md", counted)
        record = align(config, resume=True)
    return {"root": root, "config": config, "partial": partial, "calls": calls, "record": record}


def test_end_to_end_iteration_writes_the_record_and_a_fine_tuned_model(aligned: dict) -> None:
    run = aligned["root"] / "align"
    record = json.loads((run / "alignment.json").read_text())
    assert record == aligned["record"] and record["status"] == "max_iterations"
    first, second = record["iterations"]
    assert first["done"] == ["npt:DMC", "compressibility:DMC", "anchors:DMC", "dataset", "finetune"]
    assert second["done"] == ["npt:DMC"] and first["converged"] is False
    entry = first["liquids"]["DMC"]
    assert entry["experiment_g_cm3"] == 0.95 and entry["delta_g_cm3"] == pytest.approx(entry["density_g_cm3"] - 0.95)
    assert entry["delta_g_cm3"] > 0.05  # the packed box (~1.06) is far denser than the "experiment"
    assert entry["compressibility_source"] == "finite_difference" and 2e-5 <= entry["compressibility_per_bar"] <= 5e-4
    assert entry["pressure_correction_bar"] == pytest.approx(
        pressure_correction_bar(entry["density_g_cm3"], 0.95, entry["compressibility_per_bar"]), rel=1e-12)
    assert entry["pressure_correction_bar"] > 0 and entry["total_correction_bar"] == entry["pressure_correction_bar"]
    assert entry["anchor_frames"] == 4 and first["train_frames"] == 3 + 3 and first["valid_frames"] == 1
    for name in ("reference.pt", "aligned.pt", "alignment.md", "iteration_0/model.pt", "iteration_0/train.yaml",
                 "iteration_0/train/best.pt", "iteration_0/DMC/anchors.extxyz", "iteration_1/DMC/npt/thermo.csv"):
        assert (run / name).is_file(), name
    assert "| 0 | DMC |" in (run / "alignment.md").read_text()
    model = load_model(run / "iteration_0" / "model.pt", device="cpu")
    assert model.metadata["alignment"]["total_correction_bar"]["DMC"] == entry["total_correction_bar"]
    # anchors: reference energies/forces, stress lowered by ΔP_total
    anchors = ase.io.read(run / "iteration_0" / "DMC" / "anchors.extxyz", ":")
    reference = load_model(run / "reference.pt", device="cpu", dtype=torch.float64)
    graph = AtomGraph.build(anchors[0], cutoff=4.0, dtype=torch.float64)
    out = ForceField(reference)(graph, compute_stress=True)
    assert anchors[0].get_potential_energy() == pytest.approx(float(out["energy"][0]), abs=1e-8)
    expected = shifted_stress(out["stress"][0].detach().numpy(), entry["total_correction_bar"])
    assert np.allclose(anchors[0].get_stress(voigt=False), expected, atol=1e-10)


def test_fine_tuning_moves_the_pressure_at_the_experimental_density_by_the_sign_of_the_correction(aligned: dict) -> None:
    run = aligned["root"] / "align"
    anchors = ase.io.read(run / "iteration_0" / "DMC" / "anchors.extxyz", ":")
    graph = AtomGraph.build(anchors, cutoff=4.0, dtype=torch.float64)

    def pressure_bar(path: Path) -> float:
        model = load_model(path, device="cpu", dtype=torch.float64)
        stress = ForceField(model)(graph, compute_stress=True)["stress"].detach()
        return float(-torch.diagonal(stress, dim1=1, dim2=2).sum(-1).mean() / 3.0 / units.bar)

    before, after = pressure_bar(run / "reference.pt"), pressure_bar(run / "iteration_0" / "model.pt")
    correction = aligned["record"]["iterations"][0]["liquids"]["DMC"]["total_correction_bar"]
    # the anchors ask for +ΔP_total at ρ_exp; four epochs of the tiny model get within a quarter of it
    assert correction > 0 and after - before == pytest.approx(correction, rel=0.25)


def test_resume_skips_finished_steps(aligned: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = aligned["partial"]["iterations"][0]
    assert partial["done"] == ["npt:DMC", "compressibility:DMC", "anchors:DMC", "dataset"]  # killed in fine-tuning
    assert aligned["calls"] == ["iteration_1/DMC/npt"]  # no MD of iteration 0 again
    with pytest.raises(ConfigError, match="already holds an alignment"):
        align(aligned["config"])

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(align_module, "run_md", forbidden)
    monkeypatch.setattr(Trainer, "fit", forbidden)
    record = align(aligned["config"], resume=True)
    assert record["iterations"] == aligned["record"]["iterations"] and record["status"] == "max_iterations"
    changed = aligned["config"].model_copy(update={"seed": 5})
    with pytest.raises(ConfigError, match="differs from the alignment's in seed"):
        align(changed, resume=True)


def test_pressure_correction_runs_liquids_in_parallel_and_verifies_by_npt(tmp_path: Path) -> None:
    """correction: pressure with two liquids in two spawned processes: ΔP = P_target − P(ρ_exp) of each NVT run,
    the density error estimated with the given κ_T, anchors, fine-tuning, then the aligned model's NPT density."""
    second = {"name": "DMC2", "temperature_K": 300.0, "density_g_cm3": 0.95,
              "system": {"solvents": [{"name": "DMC"}], "n_molecules": 6, "seed": 2}}
    path = smoke_config(tmp_path, correction="pressure", jobs=2, compressibility={"per_bar": 1e-4})
    data = yaml.safe_load(path.read_text())
    data["liquids"].append(second)
    data["md"]["verify_steps"] = 8
    path.write_text(yaml.safe_dump(data))
    record = align(load_align_config(path))
    run = tmp_path / "align"
    first, second_iteration = record["iterations"]
    assert first["done"] == ["nvt:DMC", "nvt:DMC2", "anchors:DMC", "anchors:DMC2", "dataset", "finetune"]
    assert second_iteration["done"] == ["nvt:DMC", "nvt:DMC2"]
    for name in ("DMC", "DMC2"):
        entry = first["liquids"][name]
        pressure = stage_average(run / "iteration_0" / name / "anchor_nvt" / "thermo.csv", "nvt", "P_bar")[0]
        assert entry["pressure_correction_bar"] == pytest.approx(1.01325 - pressure, rel=1e-12)
        assert entry["delta_estimated_g_cm3"] == pytest.approx(0.95 * 1e-4 * entry["pressure_correction_bar"])
        assert "delta_g_cm3" not in entry and entry["anchor_frames"] == 4
        built = ase.io.read(run / "iteration_0" / name / "anchor_nvt" / "initial.extxyz")
        assert built.get_masses().sum() / built.get_volume() * AMU_PER_A3_TO_G_PER_CM3 == pytest.approx(0.95, rel=1e-3)
        later = second_iteration["liquids"][name]
        assert later["total_correction_bar"] == pytest.approx(entry["total_correction_bar"]
                                                              + later["pressure_correction_bar"])
    verification = record["verification"]
    assert verification["done"] == ["verify:DMC", "verify:DMC2"] and (run / "aligned.pt").is_file()
    for name, value in verification["liquids"].items():
        density = stage_average(run / "verification" / name / "thermo.csv", "npt", "density_g_cm3")[0]
        assert value["delta_g_cm3"] == pytest.approx(density - 0.95, rel=1e-12)
    assert "NPT of the aligned model" in (run / "alignment.md").read_text()


def test_pressure_correction_needs_a_compressibility(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compressibility_per_bar of DMC"):
        load_align_config(smoke_config(tmp_path, correction="pressure"))
    with pytest.raises(ConfigError, match="verify_steps is for correction 'pressure'"):
        load_align_config(smoke_config(tmp_path, md={"verify_steps": 10}))


# ---------------------------------------------------------------------------------------------- config errors


def test_config_errors_are_clean(tmp_path: Path) -> None:
    (tmp_path / "experiment.csv").write_text(EXPERIMENT_CSV)
    _tiny_model(tmp_path / "tiny.pt")
    (tmp_path / "replay.extxyz").write_text("")
    liquid = {"name": "DMC", "system": {"solvents": [{"name": "DMC"}]}}
    path = smoke_config(tmp_path, liquids=[liquid], experiment="experiment.csv", md={"n_atoms": 60})
    config = load_align_config(path)
    looked_up = config.liquids[0]
    assert looked_up.density_g_cm3 == 1.063 and looked_up.temperature_K == pytest.approx(298.15)
    assert "Xu 2004" in looked_up.density_source and looked_up.system.n_atoms == 60
    with pytest.raises(ConfigError, match=r"md\.npt_step: unknown key \(allowed keys: .*npt_steps"):
        load_align_config(path, ["md.npt_step=3"])
    unknown = {"name": "XYZ", "system": {"solvents": [{"name": "DMC"}], "n_atoms": 50}}
    with pytest.raises(ConfigError, match=r"liquids\.0 \(XYZ\): no experimental density for 'XYZ' .*known: DMC, VC"):
        load_align_config(smoke_config(tmp_path, liquids=[unknown], experiment="experiment.csv"))
    with pytest.raises(ConfigError, match=r"density_g_cm3 is not given and there is no experiment table"):
        load_align_config(smoke_config(tmp_path, liquids=[unknown]))
    with pytest.raises(ConfigError, match="gives no temperature for 'VC'"):
        load_align_config(smoke_config(tmp_path, liquids=[{**unknown, "name": "VC"}], experiment="experiment.csv"))
    with pytest.raises(ConfigError, match="exactly one of 'system'"):
        load_align_config(smoke_config(tmp_path, liquids=[{"name": "DMC", "density_g_cm3": 1.0, "temperature_K": 300}]))
    missing = smoke_config(tmp_path, model="nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file or pretrained model"):
        align(load_align_config(missing))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        align(load_align_config(smoke_config(tmp_path)), resume=True)


def test_cli_align_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tiny_model(tmp_path / "tiny.pt")
    path = smoke_config(tmp_path, model="nope.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "align", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.err.startswith("error: model: no checkpoint file")
    assert "Traceback" not in captured.err and captured.err.strip().count("\n") == 0


def test_example_config_validates() -> None:
    example = REPO / "examples" / "align_electrolyte.yaml"
    config = load_align_config(example) if (REPO.parent / "shared" / "data" / "electrolyte_experiment").is_dir() \
        else pytest.skip("shared experiment table not available")
    names = [liquid.name for liquid in config.liquids]
    assert names == ["EC", "PC", "DMC", "EMC", "DEC", "LP30"]
    assert config.liquids[0].temperature_K == pytest.approx(313.15) and config.liquids[2].density_g_cm3 == 1.063
    assert all(liquid.system.n_atoms == 400 for liquid in config.liquids) and config.replay.file.is_file()
    first = ase.io.read(config.replay.file, 0)
    assert "energy" in first.calc.results and "forces" in first.calc.results and "stress" not in first.calc.results


def test_benchmark_alignment_config_validates() -> None:
    path = REPO / "benchmarks" / "electrolyte" / "align_v1.yaml"
    config = load_align_config(path) if (REPO.parent / "shared" / "data" / "electrolyte_experiment").is_dir() \
        else pytest.skip("shared experiment table not available")
    assert config.correction == "pressure" and config.jobs == 6 and config.md.verify_steps > 0
    assert [liquid.name for liquid in config.liquids] == ["EC", "PC", "DMC", "EMC", "DEC", "LP30"]
    assert config.replay.file.is_file()


# ----------------------------------------------------------------------------------------- the train command


@pytest.mark.parametrize("argv, target", [
    (["train", "CONFIG", "--resume", "--set", "a.b=1"], "matsim.train.trainer.train_from_file"),
    (["train", "fit", "CONFIG", "--resume", "--set", "a.b=1"], "matsim.train.trainer.train_from_file"),
    (["train", "align", "CONFIG", "--resume", "--set", "a.b=1"], "matsim.train.align.align_from_file"),
    (["train", "distill", "CONFIG", "--resume", "--set", "a.b=1"], "matsim.train.distill.distill_from_file"),
])
def test_train_command_forms(argv: list[str], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name, function = target.rsplit(".", 1)
    module = pytest.importorskip(module_name)
    seen = {}
    monkeypatch.setattr(module, function, lambda config, resume, overrides: seen.update(
        config=Path(config), resume=resume, overrides=list(overrides)))
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: bamboo}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(config) if a == "CONFIG" else a for a in argv])
    assert exit_info.value.code in (0, None)
    assert seen == {"config": config, "resume": True, "overrides": ["a.b=1"]}
