"""The training configuration: one YAML file, validated by :class:`TrainConfig` (unknown keys are errors).

Example (``examples/train_ethanol_bamboo.yaml``)::

    run_dir: runs/ethanol-bamboo
    seed: 0
    dtype: float32
    model:
      name: bamboo
      hyperparameters: {cutoff: 5.0, channels: 32, num_layers: 2}   # statistics are filled in from the data
    data:
      train: ../shared/data/rmd17_ethanol/train.xyz
      isolated_atoms: ../shared/data/rmd17_ethanol/isolated_atoms.xyz
      split: {train: 950, valid: 50, seed: 0}
    loss: {energy: 1.0, forces: 100.0}
    optimizer: {lr: 0.005, batch_size: 5}
    schedule: {type: cosine, warmup_epochs: 5}
    training: {max_epochs: 500, ema_decay: 0.99, clip_grad_norm: 10.0, early_stopping_patience: 50}

Relative paths are resolved against the folder of the YAML file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config
from matsim.datasets.atoms import DataKeys

__all__ = [
    "TrainConfig",
    "ModelSection",
    "DataSection",
    "SplitSection",
    "LossSection",
    "OptimizerSection",
    "ScheduleSection",
    "TrainingSection",
    "load_train_config",
]


class ModelSection(StrictModel):
    """Which registered model to train and its hyperparameters, or which checkpoint to fine-tune.

    A fresh model: ``name`` and ``hyperparameters``. Statistics left out of ``hyperparameters`` are filled from the
    training data when the model's constructor takes them: ``species`` (elements present), ``atomic_energies``
    (E0s, eV), ``avg_num_neighbors`` and ``energy_scale`` (force RMS, eV/Å). Given values are kept as they are.

    Fine-tuning: ``init_from`` is a checkpoint file (relative to the YAML file's folder) or the name of a shipped
    pretrained model (``matsim.models.pretrained.available()``). The model is then built from the checkpoint's own
    name, hyperparameters (statistics included) and weights, not created fresh; ``name`` and ``hyperparameters``
    may be left out and, where given, must agree with the checkpoint (a :class:`ConfigError` names the key that
    differs). Every element of the new data must be among the checkpoint's species. ``refit_e0s`` (default true)
    refits the per-element reference energies E0 (eV) with the ``data.e0s`` method as a correction to the loaded
    model: the least-squares per-element fit of the residual E_label - E_model over the training split (with
    ``isolated_atoms``: the residual of each isolated atom) is added to the checkpoint's E0s, which absorbs the
    offset between two levels of theory (e.g. GFN2-xTB → DFT, hundreds of eV per atom) before the first gradient
    step; E0s given as a mapping in ``data.e0s`` are used as they are; ``false`` keeps the checkpoint's E0s. Optimiser,
    schedule, EMA and early stopping start fresh; ``--resume`` of a fine-tuning run continues it from its own
    ``resume.pt`` (``init_from`` is then not read). Example::

        model: {init_from: ../runs/ethanol-xtb/best.pt, refit_e0s: true}
    """

    name: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None
    refit_e0s: bool = True

    @model_validator(mode="after")
    def _name_or_checkpoint(self) -> "ModelSection":
        if self.name is None and self.init_from is None:
            raise ValueError("give model.name (a fresh model) or model.init_from (a checkpoint to fine-tune)")
        return self


class SplitSection(StrictModel):
    """Train/validation split of ``data.train`` (unused when ``data.valid`` is a file).

    Either explicit ``train_indices`` (+ ``valid_indices``), or seeded random sizes: ``valid`` and ``train`` as a
    fraction (a float below 1) or a count of frames; ``train`` defaults to every frame not in validation.
    """

    valid: float | int = 0.05
    train: float | int | None = None
    seed: int = 0
    train_indices: list[int] | None = None
    valid_indices: list[int] | None = None

    @model_validator(mode="after")
    def _explicit_needs_train(self) -> "SplitSection":
        if self.valid_indices is not None and self.train_indices is None:
            raise ValueError("valid_indices needs train_indices too")
        return self


class DataSection(StrictModel):
    """Data files, keys, reference energies and preprocessing cache.

    ``valid``: a separate validation file; without it ``split`` cuts ``train`` in two. ``test``: files evaluated
    once at the end. ``e0s``: ``auto`` (from ``isolated_atoms`` when given, else least squares), ``least_squares``,
    ``isolated_atoms``, or a mapping {element symbol or Z: eV}. ``cache_dir`` defaults to ``$MATSIM_CACHE_DIR`` or
    ``~/.cache/matsim/graphs``.

    Mixed data: ``keys.missing_targets: skip`` (default ``error``) accepts frames that lack some of the loss's
    targets, e.g. periodic boxes with stress beside gas-phase clusters without; each loss term is then averaged over
    the frames that have its label (:mod:`matsim.train.losses`; the CUDA-graph step too). Least-squares E0s need
    every training frame's energy (else give ``e0s`` as a mapping or ``isolated_atoms``, or fine-tune with
    ``model.refit_e0s: false``); the force RMS statistic uses the frames with forces. Example::

        data: {train: mixed.extxyz, keys: {missing_targets: skip}}
    """

    train: Path
    valid: Path | None = None
    test: list[Path] = Field(default_factory=list)
    keys: DataKeys = Field(default_factory=DataKeys)
    split: SplitSection = Field(default_factory=SplitSection)
    isolated_atoms: Path | None = None
    e0s: Literal["auto", "least_squares", "isolated_atoms"] | dict[str, float] = "auto"
    cache: bool = True
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _e0_source(self) -> "DataSection":
        if self.e0s == "isolated_atoms" and self.isolated_atoms is None:
            raise ValueError("e0s: isolated_atoms needs data.isolated_atoms (a file of single-atom frames)")
        return self


class LossSection(StrictModel):
    """Weights of the loss terms (0 switches a term off) and the error function.

    ``energy`` weighs the error of the energy per atom (eV/atom); ``forces`` of the force components (eV/Å);
    ``stress`` of the stress components (eV/Å³); ``charges`` of per-atom charges (e); ``dipole`` of the
    dipole Σ q_i r_i (e·Å). ``type``: ``mse`` or ``huber`` (with ``huber_delta`` in the units of each term).
    """

    type: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(0.01, gt=0)
    energy: float = Field(1.0, ge=0)
    forces: float = Field(100.0, ge=0)
    stress: float = Field(0.0, ge=0)
    charges: float = Field(0.0, ge=0)
    dipole: float = Field(0.0, ge=0)

    def weights(self) -> dict[str, float]:
        return {t: float(getattr(self, t)) for t in ("energy", "forces", "stress", "charges", "dipole")}

    def targets(self) -> list[str]:
        """Targets with a non-zero weight: the data must hold them."""
        return [t for t, w in self.weights().items() if w > 0]

    @model_validator(mode="after")
    def _some_weight(self) -> "LossSection":
        if not self.targets():
            raise ValueError("every loss weight is 0; give at least one of energy, forces, stress, charges, dipole")
        return self


class OptimizerSection(StrictModel):
    """AdamW settings and batch sizes (per process under DDP)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    amsgrad: bool = False
    batch_size: int = Field(5, ge=1)
    valid_batch_size: int | None = Field(None, ge=1)


class ScheduleSection(StrictModel):
    """Learning-rate schedule: linear warm-up, then ``cosine`` decay to ``min_lr_ratio`` × lr over the remaining
    epochs, ``plateau`` (× ``factor`` after ``patience`` epochs without a better validation loss) or ``constant``."""

    type: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(10, ge=1)


class TrainingSection(StrictModel):
    """Loop settings."""

    max_epochs: int = Field(100, ge=1)
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    clip_grad_norm: float | None = Field(10.0, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    valid_every: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    #: CPU threads of torch (None: torch's default). Small models train fastest on 1 thread on a shared CPU.
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = True
    #: Replay the whole training step as one CUDA graph (:mod:`matsim.train.cuda_graph`): for datasets of one
    #: molecule (every frame non-periodic with the same atom count), one process; the last, smaller batch of each
    #: epoch is dropped. Without CUDA the same fixed-shape step runs eagerly.
    cuda_graph: bool = False


class TrainConfig(StrictModel):
    """A training run (see the module docstring)."""

    run_dir: Path
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    device: DeviceName = "auto"
    model: ModelSection
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    training: TrainingSection = Field(default_factory=TrainingSection)

    def resolve_paths(self, base: Path) -> "TrainConfig":
        """A copy with relative paths made absolute against ``base`` (the YAML file's folder)."""

        fix = functools.partial(resolve_path, base=base)

        data = self.data.model_copy(
            update={
                "train": fix(self.data.train),
                "valid": fix(self.data.valid),
                "test": [fix(p) for p in self.data.test],
                "isolated_atoms": fix(self.data.isolated_atoms),
                "cache_dir": fix(self.data.cache_dir),
            }
        )
        model = self.model
        if model.init_from is not None and not _is_pretrained_name(model.init_from, base):
            model = model.model_copy(update={"init_from": str(fix(Path(model.init_from)))})
        return self.model_copy(update={"run_dir": fix(self.run_dir), "model": model, "data": data})

    def to_plain(self) -> dict[str, Any]:
        """A JSON-like dict (paths as strings) for checkpoints and the run folder."""
        return self.model_dump(mode="json")


def _is_pretrained_name(value: str, base: Path) -> bool:
    """Whether ``init_from`` names a shipped pretrained model (a file of that name beside the YAML file wins)."""
    from matsim.models import pretrained

    return value in pretrained.available() and not (base / value).exists()


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read and validate a training YAML (with ``key.path=value`` overrides); relative paths against its folder."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    config = validate_config(TrainConfig, data, source=str(path))
    return config.resolve_paths(path.resolve().parent)
