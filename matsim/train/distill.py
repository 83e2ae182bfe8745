"""Ensemble knowledge distillation: ``matsim train distill CONFIG.yaml`` (config: :mod:`matsim.train.distill_config`).

A fast student potential is fine-tuned on MD frames labelled by the mean of an ensemble of independently trained
teachers, with DFT frames replayed so that it keeps the reference level; its MD stability is measured before and
after. Stages, in order, each writing into ``run_dir``:

1. **teachers**: at least three checkpoints (given, or trained with :func:`~matsim.train.trainer.train_from_file`
   from one training config with ``--set seed=K`` into ``teachers/seed_K``). Every teacher must know every element
   of the student; the student must know every element of the systems.
2. **sampling**: per system and temperature an NVT run (:func:`~matsim.md.runner.run_md`) driven by the student
   (or the first teacher) into ``sampling/SYSTEM_TK``, a frame every ``sampling.sample_every`` steps. Runs the
   watchdog stops keep their frames (the geometries near a blow-up are the ones the student most needs).
3. **labels**: per frame the ensemble mean energy (eV), forces (eV/Å) and, for periodic frames, stress (eV/Å³);
   ``info["force_disagreement"]`` is the largest per-atom standard deviation of the teachers' forces (eV/Å,
   :func:`~matsim.datasets.active_learning.force_disagreement`) and ``info["energy_std"]`` the teachers' energy
   standard deviation (eV). Frames above ``labels.max_force_disagreement`` are dropped as unphysical, as are
   frames a teacher cannot evaluate (overlapping atoms, non-finite output). The rest go to ``distill_frames.extxyz``
   under the keys ``energy``, ``forces``, ``stress``.
4. **student**: ``student/train.extxyz`` holds the ensemble frames and the DFT replay frames (energy and forces);
   ``student/train.yaml`` fine-tunes the student from its checkpoint (``model.init_from``) on them, loss on energy
   and forces only (stress weight 0: replay frames need no stress). The result is ``student/distilled.pt``.
5. **stability**: NVT at ``stability.temperature_K`` on every system, the student before and after, until the MD
   watchdog (:mod:`matsim.md.watchdog`) stops the run or ``stability.max_steps`` pass, into
   ``stability/{before,after}/SYSTEM``; the time survived (ps) and the watchdog's reason go to ``distill.json`` and
   the table of ``distill.md``.

Reference energies. The ensemble means and the replay energies are mixed in one training set, so they must be on
one energy reference: the teachers and the student must be fitted to the same DFT level as the replay file (for
``examples/distill_electrolyte.yaml``: B3LYP/def2-SVP without dispersion, ``finetune_dft.yaml`` for all), which makes
their per-element E0s agree. The student's E0s are then refitted to the combined set as a correction
(``finetune.refit_e0s``), which absorbs a residual offset between the teachers' and the student's E0s.
Dispersion: with ``dispersion_free_fit`` (default) a D3 term added at inference (``electrolyte-small``) is switched
off for labelling and fine-tuning, whose data are dispersion-free, and put back into ``distilled.pt``; MD always
runs the models as shipped.

Resume. ``distill.json`` records every finished item (a teacher, an MD run, a stage) as soon as it is written, so a
killed run loses nothing finished: ``--resume`` skips finished items and continues an interrupted training run or MD
run from its own checkpoint. The config may change on resume only in sections that no started stage has read
(``device`` and ``progress`` always).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ase.io
import numpy as np
import torch
import yaml
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from torch import nn

from matsim._version import __version__
from matsim.core.checkpoint import load_checkpoint
from matsim.core.errors import CheckpointError, ConfigError, InputFileError, MatsimError, StructureError
from matsim.core.graph import total_charge
from matsim.core.io import atomic_write_text
from matsim.datasets.active_learning import as_calculators, force_disagreement
from matsim.datasets.atoms import frame_targets, read_frames
from matsim.models import load_model, pretrained, save_model
from matsim.train.distill_config import DistillConfig, load_distill_config
from matsim.train.finetune import switched_model, weights_dtype
from matsim.train.run_dir import RESUME_FILE, changed_keys, read_run_record

__all__ = ["EnsembleLabels", "ensemble_labels", "replay_indices", "without_dispersion", "stability_run",
           "Distillation", "distill_from_file", "STAGES"]

STAGES = ("teachers", "sampling", "labels", "student", "stability")
#: Config keys each stage reads; on resume a key read by a started stage (or one before it) may not change.
_STAGE_INPUTS = {
    "teachers": ("teachers",),
    "sampling": ("student", "systems", "sampling", "dtype"),
    "labels": ("labels", "dispersion_free_fit"),
    "student": ("replay", "finetune"),
    "stability": ("stability",),
}
_FORMAT = "matsim-distill"
_RECORD = "distill.json"
_REPORT = "distill.md"
_FRAMES = "distill_frames.extxyz"
_MD_CHECKPOINTS = ("checkpoint.npz", "checkpoint.prev.npz")


# ------------------------------------------------------------------------------------------------ labelling


@dataclass
class EnsembleLabels:
    """The outcome of :func:`ensemble_labels`.

    Attributes:
        frames: the kept frames, labelled (a :class:`SinglePointCalculator` with the ensemble means ``energy`` (eV),
            ``forces`` (N, 3) eV/Å and, for periodic frames, ``stress`` (6,) eV/Å³ Voigt with ASE's sign) and with
            ``info["force_disagreement"]`` (eV/Å) and ``info["energy_std"]`` (eV).
        disagreement: (n_frames,) force disagreement of every input frame, eV/Å; NaN where a teacher failed.
        indices: input index of each kept frame.
        above_ceiling: frames dropped for a disagreement above the ceiling.
        failed: frames a teacher could not evaluate (overlapping atoms, unsupported element, non-finite output).
    """

    frames: list[Atoms]
    disagreement: np.ndarray
    indices: list[int]
    above_ceiling: int
    failed: int

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record: counts and disagreement statistics (eV/Å)."""
        finite = self.disagreement[np.isfinite(self.disagreement)]
        stats = ({"min": float(finite.min()), "median": float(np.median(finite)), "max": float(finite.max())}
                 if finite.size else {})
        return {"sampled": int(len(self.disagreement)), "labelled": len(self.frames),
                "dropped_above_ceiling": self.above_ceiling, "failed": self.failed,
                "force_disagreement_eV_per_A": stats}


def _predict(frame: Atoms, calc: Calculator, stress: bool) -> dict[str, np.ndarray] | None:
    """Energy, forces (and stress) of ``frame`` by ``calc`` in one evaluation, float64; None when it cannot."""
    properties = ["energy", "forces"] + (["stress"] if stress else [])
    try:
        calc.calculate(frame.copy(), properties, all_changes)
    except StructureError:
        return None
    out = {name: np.asarray(calc.results[name], dtype=np.float64) for name in properties}
    return out if all(np.isfinite(v).all() for v in out.values()) else None


def ensemble_labels(frames: Sequence[Atoms], calculators: Sequence[Calculator],
                    max_force_disagreement: float | None = None) -> EnsembleLabels:
    """Label ``frames`` by the ensemble mean of ``calculators`` and drop the frames the ensemble disagrees on.

    Each kept frame is a fresh ``Atoms`` (numbers, positions, cell, pbc; ``info`` copied except calculator results)
    with ``info["charge"]`` (total charge, e) kept for models with charges. ``max_force_disagreement`` (eV/Å): frames
    whose largest per-atom force standard deviation over the teachers is above it are dropped (None keeps all).
    """
    disagreement = np.full(len(frames), np.nan)
    kept: list[Atoms] = []
    indices: list[int] = []
    above = failed = 0
    for k, frame in enumerate(frames):
        periodic = bool(np.all(frame.pbc))
        predictions = [_predict(frame, calc, periodic) for calc in calculators]
        if any(p is None for p in predictions):
            failed += 1
            continue
        forces = np.stack([p["forces"] for p in predictions])
        disagreement[k] = force_disagreement(forces, "max")
        if max_force_disagreement is not None and disagreement[k] > max_force_disagreement:
            above += 1
            continue
        energies = np.array([float(p["energy"]) for p in predictions])
        labelled = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        labelled.info.update({key: value for key, value in frame.info.items()
                              if key not in ("energy", "forces", "stress", "free_energy")})
        labelled.info.update(charge=total_charge(frame), force_disagreement=float(disagreement[k]),
                             energy_std=float(energies.std()))
        results = {"energy": float(energies.mean()), "forces": forces.mean(axis=0)}
        if periodic:
            results["stress"] = np.stack([p["stress"] for p in predictions]).mean(axis=0)
        labelled.calc = SinglePointCalculator(labelled, **results)
        kept.append(labelled)
        indices.append(k)
    return EnsembleLabels(kept, disagreement, indices, above, failed)


def replay_indices(available: int, wanted: int, seed: int) -> list[int]:
    """Indices of ``wanted`` replay frames out of ``available``: every frame as often as ``wanted`` allows whole
    copies, the remainder drawn without repetition (seeded), in file order within each copy."""
    if available < 1:
        raise InputFileError("the replay file holds no frames")
    whole, rest = divmod(wanted, available)
    chosen = np.random.default_rng(seed).choice(available, size=rest, replace=False)
    return list(range(available)) * whole + sorted(int(i) for i in chosen)


# ------------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_path(reference: str, key: str) -> Path:
    """The file of a checkpoint path or shipped pretrained name; :class:`CheckpointError` naming ``key`` otherwise."""
    path = pretrained.path_of(reference) or Path(reference)
    if not path.is_file():
        shipped = ", ".join(pretrained.available()) or "none"
        raise CheckpointError(f"{key}: no checkpoint file or pretrained model {reference!r} (shipped: {shipped})")
    return path


def _species(model: nn.Module, key: str) -> set[int]:
    species = getattr(model, "species", None)
    if species is None:
        raise CheckpointError(f"{key}: the model does not list the elements it supports (no 'species')")
    return {int(z) for z in species}


def _symbols(numbers: set[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] for z in sorted(numbers))


def _dispersion_of(model: nn.Module) -> Any:
    """The model's dispersion hyperparameter when it has a dispersion term, else None."""
    physical_terms = getattr(model, "physical_terms", None)
    if physical_terms is not None and "dispersion" in physical_terms:
        return getattr(model, "hyperparameters", {}).get("dispersion")
    return None


def without_dispersion(model: nn.Module) -> nn.Module:
    """``model`` with its D3 dispersion term removed (in place; its ``hyperparameters`` say ``dispersion: None``),
    so that it predicts at the dispersion-free level of its fit. Models without one are returned as they are."""
    physical_terms = getattr(model, "physical_terms", None)
    if physical_terms is not None and "dispersion" in physical_terms:
        del physical_terms["dispersion"]
        model.hyperparameters = {**getattr(model, "hyperparameters", {}), "dispersion": None}
    return model


def _with_dispersion(source: Path, dispersion: Any, target: Path, metadata: dict[str, Any]) -> Path:
    """Write the checkpoint ``source`` to ``target`` with ``metadata`` added and, unless ``dispersion`` is None, the
    dispersion term put back (it has no trainable weights: :func:`~matsim.train.finetune.switched_model`)."""
    checkpoint = load_checkpoint(source)
    switches = {} if dispersion is None else {"dispersion": dispersion}
    model = switched_model(checkpoint, str(source), **switches)
    return save_model(model, target, checkpoint.statistics, {**checkpoint.metadata, **metadata})


# ------------------------------------------------------------------------------------------------ MD


def _md_config(structure: Path, model: str, config: DistillConfig, stage: dict[str, Any], minimise_steps: int,
               watchdog: Any, seed: int, thermo_every: int, trajectory_every: int) -> Any:
    from matsim.md.config import MDConfig

    stages = ([{"kind": "minimise", "steps": minimise_steps}] if minimise_steps else []) + [stage]
    return MDConfig.model_validate({
        "structure": str(structure), "model": model, "device": config.device, "dtype": config.dtype,
        "stages": stages, "watchdog": watchdog.model_dump(), "analysis": {"enabled": False}, "seed": seed,
        "output": {"thermo_every": thermo_every, "trajectory_every": trajectory_every,
                   "checkpoint_every": min(stage["steps"], 1000), "progress": config.progress},
    })


def _run_md(md_config: Any, directory: Path, progress: bool) -> str | None:
    """Run ``md_config`` into ``directory`` (continued from its checkpoint when one is there; a directory without
    one holds nothing finished and starts over); the watchdog's message when it stopped the run, else None."""
    from matsim.md.runner import MDBlowUp, run_md

    resume = any((directory / name).is_file() for name in _MD_CHECKPOINTS)
    if not resume and directory.exists():
        shutil.rmtree(directory)
    try:
        run_md(md_config, directory, resume=resume, progress=progress, analyze=False)
    except MDBlowUp as exc:
        return str(exc)
    return None


def _stage_frames(directory: Path, stage: str) -> list[Atoms]:
    """Trajectory frames of ``stage`` in an MD run directory ([] when none was written)."""
    path = directory / "trajectory.extxyz"
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return [f for f in ase.io.read(path, index=":", format="extxyz") if f.info.get("stage") == stage]


def _survived_fs(directory: Path, stage: str) -> float:
    """Simulated time (fs) of the last ``thermo.csv`` row of ``stage``: the last state that passed the watchdog's
    full check when rows are written at every check (0 when there is none)."""
    path = directory / "thermo.csv"
    if not path.is_file():
        return 0.0
    with open(path, newline="") as handle:
        times = [float(row["time_fs"]) for row in csv.DictReader(handle) if row.get("stage") == stage]
    return max(times, default=0.0)


def _reason(message: str | None) -> str:
    """The watchdog's finding, shortened for the report table."""
    if message is None:
        return "survived max_steps"
    head = message.split("): ", 1)[-1]
    return head.split(";", 1)[0].split(". Try", 1)[0]


def stability_run(structure: Path, model: str, config: DistillConfig, directory: Path) -> dict[str, Any]:
    """The MD stress test of ``config.stability`` for ``model`` (checkpoint path or pretrained name) on the box in
    ``structure``, run (or continued) into ``directory``.

    Returns ``{"checkpoint", "temperature_K", "survived_ps", "max_ps", "blew_up", "reason", "message",
    "directory"}``: ``survived_ps`` is the simulated time of the last state that passed the watchdog's full check
    (``max_ps`` when the run ended without a blow-up), ``reason`` the watchdog's finding or ``survived max_steps``,
    ``message`` its full message (None without a blow-up).
    """
    cfg = config.stability
    nvt = {"kind": "nvt", "name": "stability", "steps": cfg.max_steps, "timestep_fs": cfg.timestep_fs,
           "temperature_K": cfg.temperature_K, "thermostat": cfg.thermostat}
    md = _md_config(structure, model, config, nvt, cfg.minimise_steps, cfg.watchdog, cfg.seed,
                    cfg.watchdog.check_every, cfg.max_steps)
    message = _run_md(md, directory, config.progress)
    maximum = cfg.max_steps * cfg.timestep_fs
    survived = maximum if message is None else _survived_fs(directory, "stability")
    return {"checkpoint": model, "temperature_K": cfg.temperature_K, "survived_ps": survived / 1000.0,
            "max_ps": maximum / 1000.0, "blew_up": message is not None, "reason": _reason(message),
            "message": message, "directory": str(directory)}


# ------------------------------------------------------------------------------------------------ the run


class Distillation:
    """One distillation run of a validated :class:`DistillConfig` (module docstring); :meth:`run` does it.

    Raises (from the constructor): :class:`ConfigError` for a fresh start over an existing run or a resume with
    changed inputs of started stages; :class:`CheckpointError` for nothing to resume or a missing checkpoint;
    :class:`InputFileError` for a missing replay or structure file.
    """

    def __init__(self, config: DistillConfig, resume: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.console = console or Console()
        self.run_dir = Path(config.run_dir)
        self.torch_dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self._check_inputs()
        self.record = self._open_record(resume)

    # --- set-up ------------------------------------------------------------------------------------------------
    def _check_inputs(self) -> None:
        """Every file the run will read exists (before any work is done)."""
        config = self.config
        self.student_path = _checkpoint_path(config.student, "student")
        for k, reference in enumerate(config.teachers.checkpoints or []):
            _checkpoint_path(reference, f"teachers.checkpoints.{k}")
        if config.teachers.train is not None and not config.teachers.train.is_file():
            raise ConfigError(f"teachers.train: training config not found: {config.teachers.train}")
        if not config.replay.file.is_file():
            raise InputFileError(f"replay.file: data file not found: {config.replay.file}")
        for k, system in enumerate(config.systems):
            if system.structure is not None and not system.structure.is_file():
                raise InputFileError(f"systems.{k}.structure: structure file not found: {system.structure}")

    def _open_record(self, resume: bool) -> dict[str, Any]:
        plain = self.config.to_plain()
        record = read_run_record(self.run_dir / _RECORD, resume, _FORMAT, "a distillation")
        if record is None:
            record = {"format": _FORMAT, "version": 1, "matsim_version": __version__, "config": plain, "stages": {}}
            self._save(record)
            return record
        started = [k for k, stage in enumerate(STAGES) if stage in record["stages"]]
        frozen = [key for stage in STAGES[: max(started) + 1] for key in _STAGE_INPUTS[stage]] if started else []
        changed = changed_keys(record["config"], plain, frozen)
        if changed:
            raise ConfigError(f"cannot resume {self.run_dir}: the config differs from the run's in "
                              f"{', '.join(changed)}, read by stages already started; start a new run_dir")
        record["config"] = plain
        return record

    def _save(self, record: dict[str, Any] | None = None) -> None:
        record = self.record if record is None else record
        atomic_write_text(self.run_dir / _RECORD, json.dumps(record, indent=1, default=str) + "\n")

    def _stage(self, name: str) -> dict[str, Any]:
        return self.record["stages"].setdefault(name, {})

    def _finish(self, name: str, **info: Any) -> dict[str, Any]:
        stage = self._stage(name)
        stage.update(info, finished=True)
        self._save()
        return stage

    def _say(self, text: str) -> None:
        self.console.print(f"[bold]distill[/bold] {text}")

    # --- the stages ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the stages not finished yet; returns the summary (also ``distill.json["summary"]``)."""
        student = load_model(self.student_path, device="cpu")
        caveat = (getattr(student, "metadata", None) or {}).get("caveat")
        if caveat:
            self.console.print(f"[yellow]warning: student {self.config.student}: {caveat}[/yellow]")
        self.student_species = _species(student, "student")
        self.student_dispersion = _dispersion_of(student) if self.config.dispersion_free_fit else None
        self.student_caveat = caveat
        systems = self._systems()
        teachers = self._teachers()
        self._sampling(systems, teachers)
        labels = self._labels(teachers)
        distilled = self._student(labels)
        stability = self._stability(systems, distilled)
        summary = {
            "run_dir": str(self.run_dir),
            "record": str(self.run_dir / _RECORD),
            "report": str(self.run_dir / _REPORT),
            "teachers": teachers,
            "frames": {k: v for k, v in self._stage("labels").items() if k not in ("finished", "file")},
            "distill_frames": str(self.run_dir / _FRAMES),
            "student": {k: v for k, v in self._stage("student").items() if k != "finished"},
            "stability": stability,
        }
        self.record["summary"] = summary
        self._save()
        self._write_report(summary)
        self._say(f"done: {self.run_dir / _REPORT}")
        return summary

    def _systems(self) -> dict[str, Path]:
        """The prepared box of every system in ``systems/NAME.extxyz`` (built or read once, then reused), checked
        against the student's elements."""
        from matsim.md.builder import build_box, read_structure

        out: dict[str, Path] = {}
        for k, entry in enumerate(self.config.systems):
            path = self.run_dir / "systems" / f"{entry.name}.extxyz"
            if not path.is_file():
                atoms = build_box(entry.system) if entry.system is not None else read_structure(entry.structure)
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_name(f".{path.name}.tmp")
                ase.io.write(temporary, atoms, format="extxyz")
                os.replace(temporary, path)
            numbers = {int(z) for z in ase.io.read(path, format="extxyz").numbers}
            if not numbers <= self.student_species:
                raise MatsimError(f"systems.{k} ({entry.name}): elements {_symbols(numbers - self.student_species)} "
                                  f"are unknown to the student (its species: {_symbols(self.student_species)})")
            out[entry.name] = path
        return out

    def _teachers(self) -> list[str]:
        stage = self._stage("teachers")
        if stage.get("finished"):
            return list(stage["checkpoints"])
        cfg = self.config.teachers
        if cfg.checkpoints is not None:
            checkpoints = list(cfg.checkpoints)
        else:
            from matsim.train.trainer import train_from_file

            trained = stage.setdefault("trained", {})
            for seed in cfg.seeds:
                if str(seed) in trained:
                    continue
                directory = self.run_dir / "teachers" / f"seed_{seed}"
                self._say(f"training teacher seed {seed} → {directory}")
                train_from_file(cfg.train, resume=(directory / RESUME_FILE).is_file(),
                                overrides=[*cfg.overrides, f"seed={seed}", f"run_dir={directory}"])
                trained[str(seed)] = str(directory / "best.pt")
                self._save()
            checkpoints = [trained[str(seed)] for seed in cfg.seeds]
        for k, reference in enumerate(checkpoints):
            key = f"teachers.checkpoints.{k}" if cfg.checkpoints is not None else f"teacher seed {cfg.seeds[k]}"
            species = _species(load_model(_checkpoint_path(reference, key), device="cpu"), key)
            if not self.student_species <= species:
                raise MatsimError(f"{key} ({reference}) does not know the student's elements "
                                  f"{_symbols(self.student_species - species)}: every teacher must cover the "
                                  f"student's species ({_symbols(self.student_species)})")
        self._finish("teachers", checkpoints=checkpoints)
        return checkpoints

    def _sampling(self, systems: dict[str, Path], teachers: list[str]) -> None:
        stage = self._stage("sampling")
        if stage.get("finished"):
            return
        cfg = self.config.sampling
        model = self.config.student if cfg.sampler == "student" else teachers[0]
        runs = stage.setdefault("runs", {})
        index = 0
        for name, structure in systems.items():
            for temperature in cfg.temperatures_K:
                key = f"{name}_{temperature:g}K"
                index += 1
                if key in runs:
                    continue
                directory = self.run_dir / "sampling" / key
                self._say(f"sampling {key} with the {cfg.sampler} → {directory}")
                nvt = {"kind": "nvt", "name": "sample", "steps": cfg.steps, "timestep_fs": cfg.timestep_fs,
                       "temperature_K": temperature, "thermostat": cfg.thermostat}
                md = _md_config(structure, model, self.config, nvt, cfg.minimise_steps, cfg.watchdog,
                                cfg.seed + index, cfg.sample_every, cfg.sample_every)
                message = _run_md(md, directory, self.config.progress)
                if message:
                    self._say(f"[yellow]{key}: {message}[/yellow] (the frames sampled until then are kept)")
                runs[key] = {"system": name, "temperature_K": temperature, "directory": str(directory),
                             "frames": len(_stage_frames(directory, "sample")), "stopped_by_watchdog": message}
                self._save()
        self._finish("sampling", frames=sum(run["frames"] for run in runs.values()))

    def _teacher_calculators(self, teachers: list[str]) -> list[Calculator]:
        models = []
        for k, reference in enumerate(teachers):
            model = load_model(_checkpoint_path(reference, f"teacher {k}"), device=self.config.device,
                               dtype=self.torch_dtype)
            models.append(without_dispersion(model) if self.config.dispersion_free_fit else model)
        return as_calculators(models, device=self.config.device, dtype=self.config.dtype)

    def _labels(self, teachers: list[str]) -> Path:
        path = self.run_dir / _FRAMES
        stage = self._stage("labels")
        if stage.get("finished"):
            return path
        frames = []
        for run in self._stage("sampling")["runs"].values():
            for frame in _stage_frames(Path(run["directory"]), "sample"):
                frame.info = {"charge": total_charge(frame), "system": run["system"],
                              "temperature_K": run["temperature_K"], "time_fs": float(frame.info["time_fs"]),
                              "origin": "ensemble"}
                frames.append(frame)
        if not frames:
            raise MatsimError("sampling produced no frames (every run stopped before its first sample): lower "
                              "sampling.sample_every or the sampling temperatures")
        self._say(f"labelling {len(frames)} frames with {len(teachers)} teachers")
        result = ensemble_labels(frames, self._teacher_calculators(teachers), self.config.labels.max_force_disagreement)
        summary = result.summary()
        self._say(f"kept {summary['labelled']} of {summary['sampled']} frames ({summary['dropped_above_ceiling']} "
                  f"above the disagreement ceiling, {summary['failed']} that a teacher could not evaluate)")
        if not result.frames:
            raise MatsimError(f"every sampled frame was dropped ({summary['dropped_above_ceiling']} above "
                              f"labels.max_force_disagreement = {self.config.labels.max_force_disagreement} eV/Å, "
                              f"{summary['failed']} failed): raise the ceiling or sample gentler MD")
        _write_frames(path, result.frames)
        self._finish("labels", file=str(path), **summary)
        return path

    def _student(self, labels: Path) -> Path:
        directory = self.run_dir / "student"
        distilled = directory / "distilled.pt"
        stage = self._stage("student")
        if stage.get("finished"):
            return distilled
        from matsim.train.trainer import train_from_file

        directory.mkdir(parents=True, exist_ok=True)
        init_from = self._student_init(directory)
        ensemble = read_frames(labels)
        replay = self._replay_frames(len(ensemble))
        train_file = directory / "train.extxyz"
        if not train_file.is_file():
            _write_frames(train_file, ensemble + replay)
        train_config = directory / "train.yaml"
        atomic_write_text(train_config, yaml.safe_dump(self._train_config(init_from, train_file), sort_keys=False))
        self._say(f"fine-tuning the student on {len(ensemble)} ensemble + {len(replay)} DFT replay frames → "
                  f"{directory}")
        errors = train_from_file(train_config, resume=(directory / RESUME_FILE).is_file(),
                                 overrides=self.config.finetune.overrides)
        _with_dispersion(directory / "best.pt", self.student_dispersion, distilled, {
            "distillation": {"student": self.config.student, "teachers": self._stage("teachers")["checkpoints"],
                             "record": str(self.run_dir / _RECORD)},
            **({"caveat": self.student_caveat} if self.student_caveat else {}),
        })
        self._finish("student", initial=self.config.student, init_from=init_from, checkpoint=str(distilled),
                     train_config=str(train_config), train_file=str(train_file), ensemble_frames=len(ensemble),
                     replay_frames=len(replay), errors=errors)
        return distilled

    def _student_init(self, directory: Path) -> str:
        """The checkpoint the fine-tuning starts from: the student's, or its copy without the dispersion term."""
        if self.student_dispersion is None:
            return self.config.student
        path = directory / "init.pt"
        if not path.is_file():
            checkpoint = load_checkpoint(self.student_path)
            model = without_dispersion(load_model(self.student_path, device="cpu", dtype=weights_dtype(checkpoint)))
            save_model(model, path, checkpoint.statistics, {**checkpoint.metadata,
                                                            "dispersion_removed_for_fit": self.student_dispersion})
        return str(path)

    def _replay_frames(self, n_ensemble: int) -> list[Atoms]:
        cfg = self.config.replay
        frames = read_frames(cfg.file)
        if cfg.count is not None:
            wanted = cfg.count
        elif cfg.fraction is not None:
            wanted = max(1, round(cfg.fraction / (1.0 - cfg.fraction) * n_ensemble))
        else:
            wanted = len(frames)
        out = []
        for i in replay_indices(len(frames), wanted, cfg.seed):
            frame = frames[i]
            targets = frame_targets(frame, cfg.keys, ("energy", "forces"), source=cfg.file, index=i)
            atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
            atoms.info.update(charge=total_charge(frame), origin="dft_replay", replay_index=i)
            atoms.calc = SinglePointCalculator(atoms, energy=float(targets["energy"]), forces=targets["forces"])
            out.append(atoms)
        return out

    def _train_config(self, init_from: str, train_file: Path) -> dict[str, Any]:
        ft, directory = self.config.finetune, self.run_dir / "student"
        return {
            "run_dir": str(directory), "seed": ft.seed, "dtype": self.config.dtype, "device": self.config.device,
            "model": {"init_from": init_from, "refit_e0s": ft.refit_e0s},
            "data": {"train": str(train_file), "split": {"valid": ft.valid_fraction, "seed": ft.seed},
                     "cache": False},
            "loss": {"energy": ft.energy_weight, "forces": ft.forces_weight, "stress": 0.0},
            "optimizer": {"lr": ft.lr, "batch_size": ft.batch_size},
            "schedule": {"type": "cosine"},
            "training": {"max_epochs": ft.max_epochs, "ema_decay": ft.ema_decay,
                         "early_stopping_patience": ft.early_stopping_patience, "progress": self.config.progress,
                         "tensorboard": False},
        }

    def _stability(self, systems: dict[str, Path], distilled: Path) -> list[dict[str, Any]]:
        stage = self._stage("stability")
        runs = stage.setdefault("runs", {})
        models = {"before": self.config.student, "after": str(distilled)}
        if not stage.get("finished"):
            for label, model in models.items():
                for name, structure in systems.items():
                    key = f"{label}/{name}"
                    if key in runs:
                        continue
                    directory = self.run_dir / "stability" / label / name
                    self._say(f"stability {key} at {self.config.stability.temperature_K:g} K → {directory}")
                    runs[key] = {"model": label, "system": name,
                                 **stability_run(structure, model, self.config, directory)}
                    self._save()
            self._finish("stability")
        return [runs[f"{label}/{name}"] for label in models for name in systems]

    def _write_report(self, summary: dict[str, Any]) -> None:
        frames, student = summary["frames"], summary["student"]
        lines = [
            "# Ensemble distillation", "",
            f"Student `{student['initial']}` → `{student['checkpoint']}`; {len(summary['teachers'])} teachers: "
            + ", ".join(f"`{t}`" for t in summary["teachers"]) + ".", "",
            f"Frames: {frames['sampled']} sampled, {frames['labelled']} labelled by the ensemble mean, "
            f"{frames['dropped_above_ceiling']} dropped above the force-disagreement ceiling "
            f"({self.config.labels.max_force_disagreement} eV/Å), {frames['failed']} that a teacher could not "
            f"evaluate. Fine-tuning set: {student['ensemble_frames']} ensemble + {student['replay_frames']} DFT "
            "replay frames.", "",
            "## MD stability (NVT until the watchdog stops the run)", "",
            "| model | system | T (K) | survived (ps) | of (ps) | reason |", "|---|---|---|---|---|---|",
        ]
        for row in summary["stability"]:
            lines.append(f"| {row['model']} | {row['system']} | {row['temperature_K']:g} | {row['survived_ps']:.3f} "
                         f"| {row['max_ps']:.3f} | {row['reason']} |")
        resolution = self.config.stability.watchdog.check_every * self.config.stability.timestep_fs / 1000.0
        lines += ["", f"Survived time is resolved to the watchdog's check interval ({resolution:g} ps).", ""]
        atomic_write_text(self.run_dir / _REPORT, "\n".join(lines))


def _write_frames(path: Path, frames: list[Atoms]) -> None:
    """``frames`` to an extxyz file, atomically (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    ase.io.write(temporary, frames, format="extxyz")
    os.replace(temporary, path)


def distill_from_file(config_path: Path, resume: bool = False, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load a distillation YAML (with ``key.path=value`` overrides) and run it; the body of ``matsim train
    distill``. Returns the summary: paths, frame counts, the distilled checkpoint and the stability table rows
    (``survived_ps``, ``reason``, ... per model and system)."""
    config = load_distill_config(config_path, overrides)
    return Distillation(config, resume=resume).run()
