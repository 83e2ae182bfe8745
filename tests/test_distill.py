"""Ensemble distillation (``matsim train distill``): three tiny bamboo teachers trained on a few ethanol frames label
short MD of a two-ethanol box; the student, fine-tuned on the ensemble frames plus replayed "DFT" (rMD17) frames,
moves toward the ensemble mean; a killed run resumes without redoing finished stages; mistakes are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms

import matsim.md.runner
import matsim.train.trainer
from matsim.calculator import MatSimCalculator
from matsim.core.errors import CheckpointError, ConfigError, InputFileError, MatsimError
from matsim.models import create, load_model, save_model
from matsim.train import distill
from matsim.train.distill import Distillation, distill_from_file, ensemble_labels, replay_indices
from matsim.train.distill_config import load_distill_config
from test_train import ETHANOL, write_config

pytestmark = [pytest.mark.filterwarnings("ignore:the training compositions determine only"),
              pytest.mark.usefixtures("one_thread")]

TINY = dict(cutoff=4.0, channels=8, num_layers=1, num_heads=2, num_radial=6, radial_hidden=16, charges=False)


def _two_ethanol_box(frame: Atoms) -> Atoms:
    """Two ethanol molecules in a periodic 9 Å cube (18 atoms)."""
    first = frame.positions - frame.positions.mean(axis=0) + 2.5
    second = first[:, [1, 2, 0]] + 4.5
    return Atoms(numbers=np.concatenate([frame.numbers] * 2), positions=np.concatenate([first, second]),
                 cell=[9.0] * 3, pbc=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Teacher train config (``teacher.yaml``, 12 ethanol frames), a student trained briefly with another seed,
    a replay file of 6 other frames and the box."""
    if not ETHANOL.is_file():
        pytest.skip("shared ethanol data not available")
    root = tmp_path_factory.mktemp("distill")
    frames = ase.io.read(ETHANOL, ":18")
    ase.io.write(root / "ethanol12.xyz", frames[:12], format="extxyz")
    ase.io.write(root / "replay.xyz", frames[12:], format="extxyz")
    ase.io.write(root / "box.extxyz", _two_ethanol_box(frames[0]), format="extxyz")
    write_config(root, "teacher", **{"data.train": "ethanol12.xyz", "data.split": {"train": 8, "valid": 4, "seed": 0},
                                     "training.max_epochs": 6, "optimizer": {"lr": 0.05, "batch_size": 2},
                                     "training.tensorboard": False})
    # the student: one epoch of four steps, so its forces are far from the teachers' (6 epochs of four steps)
    matsim.train.trainer.train_from_file(root / "teacher.yaml", overrides=[
        "seed=11", "training.max_epochs=1", "optimizer.batch_size=4", f"run_dir={root / 'student0'}"])
    return root


def write_distill_config(root: Path, name: str, **changes) -> Path:
    """A tiny CPU distillation config (float64) in ``root/name.yaml``; ``changes`` replace top-level sections."""
    config = {
        "run_dir": name,
        "student": "student0/best.pt",
        "device": "cpu",
        "dtype": "float64",
        "teachers": {"train": "teacher.yaml", "seeds": [0, 1, 2]},
        "systems": [{"name": "ethanol2", "structure": "box.extxyz"}],
        "sampling": {"temperatures_K": [300, 600], "steps": 8, "sample_every": 2, "timestep_fs": 0.5,
                     "minimise_steps": 0, "seed": 1},
        "labels": {"max_force_disagreement": 100.0},
        "replay": {"file": "replay.xyz", "count": 4},
        "finetune": {"lr": 0.05, "max_epochs": 10, "batch_size": 2, "valid_fraction": 0.2, "ema_decay": None,
                     "early_stopping_patience": None},
        "stability": {"temperature_K": 600, "max_steps": 10, "timestep_fs": 0.5, "minimise_steps": 2,
                      "watchdog": {"check_every": 2}},
    }
    config.update(changes)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[Path]:
    """Three randomly initialised tiny bamboos for H, C, O (different seeds), saved as checkpoints."""
    root = tmp_path_factory.mktemp("tiny")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = create("bamboo", species=[1, 6, 8], **TINY)
        paths.append(save_model(model, root / f"m{seed}.pt"))
    return paths


# ------------------------------------------------------------------------------------------------ labels


def test_ensemble_mean_labels_are_the_mean_of_the_teachers(workdir: Path, tiny_models: list[Path]) -> None:
    box = ase.io.read(workdir / "box.extxyz")
    molecule = Atoms(numbers=box.numbers[:9], positions=box.positions[:9])  # non-periodic: no stress
    frames = [box, molecule]
    calculators = [MatSimCalculator(p, device="cpu", dtype="float64") for p in tiny_models]
    result = ensemble_labels(frames, calculators)
    assert result.indices == [0, 1] and result.above_ceiling == result.failed == 0
    for frame, labelled in zip(frames, result.frames):
        own = []
        for path in tiny_models:
            atoms = frame.copy()
            atoms.calc = MatSimCalculator(path, device="cpu", dtype="float64")
            own.append((atoms.get_potential_energy(), atoms.get_forces(),
                        atoms.get_stress() if atoms.pbc.all() else None))
        assert labelled.get_potential_energy() == pytest.approx(np.mean([o[0] for o in own]), rel=0, abs=1e-12)
        np.testing.assert_allclose(labelled.get_forces(), np.mean([o[1] for o in own], axis=0), rtol=0, atol=1e-12)
        spread = np.sqrt(((np.stack([o[1] for o in own]) - labelled.get_forces()) ** 2).sum(-1).mean(0)).max()
        assert labelled.info["force_disagreement"] == pytest.approx(spread, rel=1e-12)
        assert labelled.info["energy_std"] == pytest.approx(np.std([o[0] for o in own]), rel=1e-9)
        if frame.pbc.all():
            np.testing.assert_allclose(labelled.get_stress(), np.mean([o[2] for o in own], axis=0), atol=1e-12)
        else:
            assert "stress" not in labelled.calc.results


def test_disagreement_ceiling_drops_frames(workdir: Path, tiny_models: list[Path]) -> None:
    box = ase.io.read(workdir / "box.extxyz")
    squeezed = box.copy()
    squeezed.set_cell(box.cell * 0.85, scale_atoms=True)
    overlapping = box.copy()
    overlapping.positions[1] = overlapping.positions[0] + 0.1  # a teacher refuses it: counted as failed
    calculators = [MatSimCalculator(p, device="cpu", dtype="float64") for p in tiny_models]
    scores = ensemble_labels([box, squeezed], calculators).disagreement
    assert np.all(np.isfinite(scores)) and scores[0] != scores[1]
    ceiling = float(scores.mean())
    result = ensemble_labels([box, squeezed, overlapping], calculators, max_force_disagreement=ceiling)
    assert result.indices == [int(np.argmin(scores))]
    assert result.above_ceiling == 1 and result.failed == 1 and np.isnan(result.disagreement[2])
    assert result.summary()["labelled"] == 1 and result.summary()["sampled"] == 3


def test_replay_indices_repeat_whole_copies_then_draw() -> None:
    assert replay_indices(5, 3, seed=0) == sorted(replay_indices(5, 3, seed=0))
    assert len(set(replay_indices(5, 3, seed=0))) == 3
    drawn = replay_indices(4, 10, seed=1)
    assert drawn[:8] == [0, 1, 2, 3] * 2 and len(drawn) == 10


def test_dispersion_is_taken_out_for_the_fit_and_put_back(workdir: Path, tmp_path: Path) -> None:
    box = ase.io.read(workdir / "box.extxyz")

    def energy(model) -> float:
        atoms = box.copy()
        atoms.calc = MatSimCalculator(model, device="cpu", dtype="float64")
        return atoms.get_potential_energy()

    torch.manual_seed(3)
    with_d3 = save_model(create("bamboo", species=[1, 6, 8], dispersion="b3lyp", **TINY), tmp_path / "d3.pt")
    stripped = distill.without_dispersion(load_model(with_d3, device="cpu", dtype=torch.float64))
    assert stripped.hyperparameters["dispersion"] is None and "dispersion" not in stripped.physical_terms
    save_model(stripped, tmp_path / "fit.pt")
    assert energy(tmp_path / "fit.pt") != pytest.approx(energy(with_d3), abs=1e-3)  # D3 of two molecules
    restored = distill._with_dispersion(tmp_path / "fit.pt", "b3lyp", tmp_path / "back.pt", {"note": "x"})
    assert energy(restored) == pytest.approx(energy(with_d3), rel=0, abs=1e-10)
    assert load_model(restored, device="cpu").metadata["note"] == "x"


# ------------------------------------------------------------------------------------------------ end to end


def test_distillation_end_to_end_with_a_kill_and_resume(workdir: Path, monkeypatch) -> None:
    config = write_distill_config(workdir, "run")
    real_train, real_md = matsim.train.trainer.train_from_file, matsim.md.runner.run_md
    calls = {"train": [], "md": []}

    def killed_student(path, resume=False, overrides=()):
        if Path(path).parent.name == "student":
            raise KeyboardInterrupt  # killed in the student's fine-tuning
        calls["train"].append(Path(path).name)
        return real_train(path, resume, overrides)

    monkeypatch.setattr(matsim.train.trainer, "train_from_file", killed_student)
    with pytest.raises(KeyboardInterrupt):
        distill_from_file(config)
    run_dir = workdir / "run"
    record = json.loads((run_dir / "distill.json").read_text())
    assert [s for s in distill.STAGES if record["stages"].get(s, {}).get("finished")] == \
        ["teachers", "sampling", "labels"]
    assert calls["train"] == ["teacher.yaml"] * 3
    for seed in (0, 1, 2):
        assert (run_dir / "teachers" / f"seed_{seed}" / "best.pt").is_file()

    def spy_train(path, resume=False, overrides=()):
        calls["train"].append(Path(path).name)
        return real_train(path, resume, overrides)

    def spy_md(*args, **kwargs):
        calls["md"].append(Path(args[1]).relative_to(run_dir).as_posix())
        return real_md(*args, **kwargs)

    monkeypatch.setattr(matsim.train.trainer, "train_from_file", spy_train)
    monkeypatch.setattr(matsim.md.runner, "run_md", spy_md)
    calls["train"].clear()
    with pytest.raises(ConfigError, match="already holds a distillation"):
        distill_from_file(config)
    with pytest.raises(ConfigError, match="sampling.steps"):
        distill_from_file(config, resume=True, overrides=["sampling.steps=20"])
    summary = distill_from_file(config, resume=True)
    assert calls["train"] == ["train.yaml"]  # teachers, sampling and labels were not redone
    assert calls["md"] == ["stability/before/ethanol2", "stability/after/ethanol2"]

    # frames: 2 temperatures x 4 samples, all kept under the generous ceiling; 4 replay frames
    labelled = ase.io.read(run_dir / "distill_frames.extxyz", ":")
    assert summary["frames"]["sampled"] == 8 and len(labelled) == summary["frames"]["labelled"] == 8
    assert {f.info["temperature_K"] for f in labelled} == {300.0, 600.0}
    frame = labelled[0]
    assert {"energy", "forces", "stress"} <= set(frame.calc.results) and frame.info["force_disagreement"] > 0
    assert summary["student"]["ensemble_frames"] == 8 and summary["student"]["replay_frames"] == 4
    train = yaml.safe_load((run_dir / "student" / "train.yaml").read_text())
    assert train["model"]["init_from"] == str(workdir / "student0" / "best.pt")
    assert train["loss"]["stress"] == 0.0 and len(ase.io.read(run_dir / "student" / "train.extxyz", ":")) == 12

    # the distilled student is closer to the ensemble mean than the student was
    def force_error(checkpoint: Path) -> float:
        calc = MatSimCalculator(checkpoint, device="cpu", dtype="float64")
        errors = []
        for f in labelled:
            atoms = f.copy()
            atoms.calc = calc
            errors.append(np.abs(atoms.get_forces() - f.get_forces()).mean())
        return float(np.mean(errors))

    before, after = force_error(workdir / "student0" / "best.pt"), force_error(Path(summary["student"]["checkpoint"]))
    assert after < 0.8 * before

    # stability before and after, in distill.json and distill.md
    rows = summary["stability"]
    assert [(r["model"], r["system"]) for r in rows] == [("before", "ethanol2"), ("after", "ethanol2")]
    for row in rows:
        assert 0.0 <= row["survived_ps"] <= row["max_ps"] == pytest.approx(0.005)
        assert row["blew_up"] or row["reason"] == "survived max_steps"
    assert json.loads((run_dir / "distill.json").read_text())["summary"]["stability"] == rows
    report = (run_dir / "distill.md").read_text()
    assert "| before | ethanol2 | 600 |" in report and "| after | ethanol2 | 600 |" in report

    # a second resume has nothing left to do
    calls["train"].clear()
    calls["md"].clear()
    assert distill_from_file(config, resume=True) == summary
    assert calls == {"train": [], "md": []}


def test_stability_run_reports_the_time_to_blow_up(workdir: Path, tmp_path: Path) -> None:
    """A watchdog that wants C-H bonds above 1 Å trips within a few steps: the last state that passed a full check
    (every 2 steps of 0.5 fs, after 2 minimiser steps) gives the time survived."""
    config = load_distill_config(write_distill_config(workdir, "blow_up"), ["stability.max_steps=40",
                                                                            "stability.watchdog.min_distance=1.0"])
    row = distill.stability_run(workdir / "box.extxyz", str(workdir / "student0" / "best.pt"), config,
                                tmp_path / "md")
    assert row["blew_up"] and row["max_ps"] == pytest.approx(0.02)
    assert row["survived_ps"] == pytest.approx(0.001) and row["reason"].endswith("Å apart (minimum 1.0 Å)")
    assert "step 4" in row["message"] and (tmp_path / "md" / "last_good.extxyz").is_file()


# ------------------------------------------------------------------------------------------------ errors


def test_fewer_than_three_teachers_is_a_config_error(workdir: Path, tiny_models: list[Path]) -> None:
    two = [str(p) for p in tiny_models[:2]]
    with pytest.raises(ConfigError, match="at least 3 independently trained teachers, got 2 checkpoints"):
        load_distill_config(write_distill_config(workdir, "two", teachers={"checkpoints": two}))
    with pytest.raises(ConfigError, match="at least 3 .* got 2 seeds"):
        load_distill_config(write_distill_config(workdir, "two_seeds", teachers={"train": "teacher.yaml",
                                                                                 "seeds": [0, 1]}))
    with pytest.raises(ConfigError, match="must be distinct"):
        load_distill_config(write_distill_config(workdir, "same_seeds", teachers={"train": "teacher.yaml",
                                                                                  "seeds": [0, 1, 1]}))


def test_bad_configs_are_clear_errors(workdir: Path, tiny_models: list[Path]) -> None:
    with pytest.raises(ConfigError, match=r"colour: unknown key \(allowed keys: .*run_dir"):
        load_distill_config(write_distill_config(workdir, "unknown", colour="blue"))
    with pytest.raises(ConfigError, match=r"sampling.temperature: unknown key"):
        load_distill_config(write_distill_config(workdir, "typo", sampling={"temperature": 300}))
    with pytest.raises(ConfigError, match=r"replay.count.*replay.fraction"):
        load_distill_config(write_distill_config(workdir, "both", replay={"file": "replay.xyz", "count": 2,
                                                                          "fraction": 0.5}))
    three = [str(p) for p in tiny_models]
    missing = write_distill_config(workdir, "missing", teachers={"checkpoints": [*three[:2], "nope.pt"]})
    with pytest.raises(CheckpointError, match=r"teachers.checkpoints.2: no checkpoint file .*'.*nope.pt'"):
        distill_from_file(missing)
    with pytest.raises(CheckpointError, match="student: no checkpoint file"):
        distill_from_file(write_distill_config(workdir, "no_student", student="gone.pt"))
    with pytest.raises(InputFileError, match="replay.file: data file not found"):
        distill_from_file(write_distill_config(workdir, "no_replay", replay={"file": "gone.xyz"}))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        distill_from_file(write_distill_config(workdir, "never_run"), resume=True)
    assert not (workdir / "missing").exists()  # nothing is written before the inputs are checked


def test_teachers_must_cover_the_students_elements(workdir: Path, tiny_models: list[Path], tmp_path: Path) -> None:
    torch.manual_seed(5)
    save_model(create("bamboo", species=[1, 6], **TINY), tmp_path / "no_oxygen.pt")
    teachers = [str(tiny_models[0]), str(tiny_models[1]), str(tmp_path / "no_oxygen.pt")]
    config = load_distill_config(write_distill_config(workdir, "uncovered", teachers={"checkpoints": teachers},
                                                      student=str(tiny_models[2])))
    with pytest.raises(MatsimError, match=r"teachers.checkpoints.2 .* does not know the student's elements O"):
        Distillation(config).run()
