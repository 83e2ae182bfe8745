"""The configuration of ensemble knowledge distillation (``matsim train distill CONFIG.yaml``): one YAML file validated
by :class:`DistillConfig` (unknown keys are errors; see :mod:`matsim.train.distill` for what each stage does).

Example (``examples/distill_electrolyte.yaml``, abridged)::

    run_dir: ../runs/distill-electrolyte
    student: electrolyte-small                 # shipped name or checkpoint path
    teachers:                                  # >= 3: checkpoints, or a train config and seeds
      train: ../benchmarks/electrolyte/finetune_dft.yaml
      seeds: [0, 1, 2]
    systems:
      - {name: LP30, system: {solvents: [{name: EC}, {name: DMC}], ratio_basis: mass,
                              salts: [{name: LiPF6, concentration: 1.0}], n_atoms: 300}}
      - {name: DMC, structure: dmc_box.extxyz}
    sampling: {temperatures_K: [300, 500], steps: 2000, sample_every: 20}
    labels: {max_force_disagreement: 1.0}      # eV/Å
    replay: {file: ../benchmarks/electrolyte/data/dft-train.extxyz.xz, fraction: 0.5}
    finetune: {lr: 2.0e-4, max_epochs: 60}
    stability: {temperature_K: 500, max_steps: 20000}

Units: temperatures in K, times in fs, forces and force disagreements in eV/Å. Relative paths are resolved against
the folder of the YAML file; ``teachers.overrides`` are ``key=value`` settings applied to the teachers' training
config as ``--set`` would (relative paths in them are taken relative to that config's folder).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config
from matsim.datasets.atoms import DataKeys
from matsim.md.builder import SystemConfig
from matsim.md.config import WatchdogConfig

__all__ = [
    "MIN_TEACHERS",
    "TeachersSection",
    "SystemEntry",
    "SamplingSection",
    "LabelsSection",
    "ReplaySection",
    "FinetuneSection",
    "StabilitySection",
    "DistillConfig",
    "load_distill_config",
]

#: The smallest ensemble that distillation accepts: with two teachers the mean is a coin toss between them and the
#: spread says nothing about which one is wrong.
MIN_TEACHERS = 3

Thermostat = Literal["nose-hoover-chain", "bussi", "langevin"]


class TeachersSection(StrictModel):
    """The ensemble: ``checkpoints`` (checkpoint paths or shipped pretrained names), or a training config ``train``
    run once per seed of ``seeds`` (each into ``run_dir/teachers/seed_K`` with ``--set seed=K``; ``overrides`` are
    further ``key=value`` settings for those runs). Either way at least :data:`MIN_TEACHERS` distinct teachers."""

    checkpoints: list[str] | None = None
    train: Path | None = None
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> "TeachersSection":
        if (self.checkpoints is None) == (self.train is None):
            raise ValueError("give exactly one of teachers.checkpoints (trained models) and teachers.train (a "
                             "training config run once per seed)")
        members = self.checkpoints if self.checkpoints is not None else self.seeds
        what = "checkpoints" if self.checkpoints is not None else "seeds"
        if len(members) < MIN_TEACHERS:
            raise ValueError(f"distillation needs at least {MIN_TEACHERS} independently trained teachers, got "
                             f"{len(members)} {what}")
        if len(set(members)) != len(members):
            raise ValueError(f"teachers.{what} must be distinct (a repeated teacher is not independent)")
        if self.checkpoints is not None and self.overrides:
            raise ValueError("teachers.overrides apply to teachers.train only")
        return self


class SystemEntry(StrictModel):
    """One system for sampling and for the stability test: a box to build (``system``, as in ``matsim md run``) or a
    periodic structure file (``structure``), exactly one; ``name`` labels its outputs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    system: SystemConfig | None = None
    structure: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SystemEntry":
        if (self.system is None) == (self.structure is None):
            raise ValueError(f"system {self.name!r}: give exactly one of 'system' (a box to build) and 'structure'")
        return self


class _NVTRuns(StrictModel):
    """What the sampling and the stability runs share: ``minimise_steps`` of FIRE, then NVT with ``thermostat`` at
    ``timestep_fs`` under a watchdog, seeded by ``seed``."""

    timestep_fs: PositiveFloat = 1.0
    minimise_steps: NonNegativeInt = 100
    thermostat: Thermostat = "langevin"
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    seed: NonNegativeInt = 0


class SamplingSection(_NVTRuns):
    """NVT runs that collect the frames to label: one per system and temperature, ``steps`` of ``timestep_fs``
    after ``minimise_steps`` of FIRE, a frame every ``sample_every`` steps. ``sampler``: the model that drives them,
    the ``student`` (its own unstable regions are what the distillation should fix) or the first teacher
    (``teacher0``). A temperature above the target one reaches off-equilibrium geometries. A run the watchdog
    stops keeps the frames sampled until then."""

    sampler: Literal["student", "teacher0"] = "student"
    temperatures_K: list[PositiveFloat] = Field(default_factory=lambda: [300.0], min_length=1)
    steps: PositiveInt = 1000
    sample_every: PositiveInt = 20


class LabelsSection(StrictModel):
    """Ensemble labelling: frames whose disagreement (largest per-atom standard deviation of the teachers' forces,
    eV/Å) exceeds ``max_force_disagreement`` are dropped as unphysical geometries (None keeps every frame)."""

    max_force_disagreement: PositiveFloat | None = 1.0


class ReplaySection(StrictModel):
    """DFT frames mixed into the student's training set so it does not forget the reference level.

    ``file``: extxyz (or ASE db) with energies and forces under ``keys``. How many: ``count`` frames, or a
    ``fraction`` of the combined training set, or (neither) every frame of the file; frames are drawn without
    repetition (seeded) while the file has enough, then repeated whole. The DFT level must be the one the teachers
    and the student were fitted to, so that their reference energies (E0s) agree with the file's.
    """

    file: Path
    keys: DataKeys = Field(default_factory=DataKeys)
    count: PositiveInt | None = None
    fraction: float | None = Field(default=None, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_size(self) -> "ReplaySection":
        if self.count is not None and self.fraction is not None:
            raise ValueError("give at most one of replay.count and replay.fraction")
        return self


class FinetuneSection(StrictModel):
    """The student's fine-tuning run (a :class:`~matsim.train.config.TrainConfig` generated into
    ``run_dir/student/train.yaml``): loss on energy per atom and forces only (stress weight 0), AdamW at ``lr``,
    cosine decay over ``max_epochs``, ``valid_fraction`` of the frames for validation and early stopping.
    ``overrides``: any further ``key=value`` settings of that config."""

    lr: PositiveFloat = 2e-4
    max_epochs: PositiveInt = 50
    batch_size: PositiveInt = 4
    energy_weight: float = Field(1.0, ge=0)
    forces_weight: float = Field(100.0, ge=0)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    early_stopping_patience: PositiveInt | None = 20
    refit_e0s: bool = True
    seed: int = 0
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_loss(self) -> "FinetuneSection":
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("energy_weight and forces_weight are both 0")
        return self


class StabilitySection(_NVTRuns):
    """The MD stress test of the student before and after distillation: on every system, ``minimise_steps`` of FIRE
    then NVT at ``temperature_K`` until the watchdog stops it or ``max_steps`` pass. The time survived is resolved to
    ``watchdog.check_every`` steps."""

    temperature_K: PositiveFloat = 500.0
    max_steps: PositiveInt = 10000
    thermostat: Thermostat = "bussi"


class DistillConfig(StrictModel):
    """A whole distillation run (module docstring).

    ``student``: checkpoint path or shipped pretrained name. ``device`` and ``dtype`` apply to MD, labelling and the
    fine-tuning (the teachers' training keeps its own config's). ``dispersion_free_fit``: the reference data are
    dispersion-free and D3 is added at inference (BAMBOO's recipe, ``electrolyte-small``): teachers label without
    their dispersion term, the student is fine-tuned without it and gets it back; MD always runs the full models.
    """

    run_dir: Path
    student: str
    device: DeviceName = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    dispersion_free_fit: bool = True
    progress: bool = False
    teachers: TeachersSection
    systems: list[SystemEntry] = Field(min_length=1)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    labels: LabelsSection = Field(default_factory=LabelsSection)
    replay: ReplaySection
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    stability: StabilitySection = Field(default_factory=StabilitySection)

    @model_validator(mode="after")
    def _unique_names(self) -> "DistillConfig":
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise ValueError(f"system names must be unique, got {names}")
        return self

    def resolve_paths(self, base: Path) -> "DistillConfig":
        """A copy with relative paths made absolute against ``base`` (the YAML file's folder); pretrained names of
        ``student`` and ``teachers.checkpoints`` stay names."""
        fix = functools.partial(resolve_path, base=base)
        model = functools.partial(_model_reference, base=base)
        teachers = self.teachers.model_copy(update={
            "train": fix(self.teachers.train),
            "checkpoints": None if self.teachers.checkpoints is None else [model(c) for c in self.teachers.checkpoints],
        })
        systems = [s.model_copy(update={"structure": fix(s.structure)}) for s in self.systems]
        replay = self.replay.model_copy(update={"file": fix(self.replay.file)})
        return self.model_copy(update={"run_dir": fix(self.run_dir), "student": model(self.student),
                                       "teachers": teachers, "systems": systems, "replay": replay})

    def to_plain(self) -> dict[str, Any]:
        """A JSON-like dict (paths as strings) for ``distill.json``."""
        return self.model_dump(mode="json")


def _model_reference(value: str, base: Path) -> str:
    """A shipped pretrained name as it is (a file of that name beside the YAML file wins), else an absolute path."""
    from matsim.models import pretrained

    if pretrained.path_of(value) is not None and not (base / value).exists():
        return value
    return str(resolve_path(Path(value), base))


def load_distill_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
    """Read and validate a distillation YAML (with ``key.path=value`` overrides); relative paths against its folder.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key or a bad value (the message names the key).
    """
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    config = validate_config(DistillConfig, data, source=str(path))
    return config.resolve_paths(path.resolve().parent)
