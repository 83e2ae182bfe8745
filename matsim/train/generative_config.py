"""The training configuration of generative models (CDVAE, UniMat, DiffSpectra): one YAML file, validated by
:class:`GenerativeTrainConfig` (unknown keys are errors), or :class:`SpectraTrainConfig` for a model whose
``dataset_kind`` is ``"spectra"`` (DiffSpectra: ``data.train`` is a ``SPECTRA.h5`` file,
``examples/train_diffspectra_qm9.yaml``).

Same vocabulary as the potentials' :class:`~matsim.train.config.TrainConfig` (``optimizer``, ``schedule`` and
``training`` are the same sections), with a crystal ``data`` section. Example
(``examples/train_cdvae_perov5.yaml``)::

    run_dir: runs/cdvae-perov5
    seed: 0
    model:
      name: cdvae
      hyperparameters: {hidden: 128, latent_dim: 256}   # species, lattice and property statistics come from the data
    data:
      train: ../../shared/data/perov_5/pool.csv
      split: {valid: 0.1, seed: 0}
      property: heat_all
    optimizer: {lr: 0.001, batch_size: 256}
    schedule: {type: cosine, warmup_epochs: 5}
    training: {max_epochs: 500, ema_decay: 0.999, clip_grad_norm: 10.0, early_stopping_patience: 100}

Relative paths are resolved against the folder of the YAML file. Training runs in float32.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config
from matsim.train.config import OptimizerSection, ScheduleSection, SplitSection, TrainingSection

__all__ = ["GenerativeTrainConfig", "SpectraTrainConfig", "GenerativeModelSection", "CrystalDataSection",
           "SpectraDataSection", "load_generative_config"]


class GenerativeModelSection(StrictModel):
    """A registered generative model and its hyperparameters (data statistics are filled in where left out).

    ``init_from``: a checkpoint of the same model to start from (its weights and hyperparameters, data statistics
    included; ``hyperparameters`` must then be left out): training goes on with new data or settings, with a fresh
    optimiser, schedule and EMA. Relative to the YAML file's folder.
    """

    name: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    init_from: Path | None = None

    @model_validator(mode="after")
    def _one_source_of_hyperparameters(self) -> "GenerativeModelSection":
        if self.init_from is not None and self.hyperparameters:
            raise ValueError("give model.hyperparameters (a fresh model) or model.init_from (a checkpoint whose "
                             "hyperparameters are kept), not both")
        return self


class CrystalDataSection(StrictModel):
    """Crystal CSV files (a ``cif`` column; CDVAE format).

    ``valid``: a separate validation file; without it ``split`` cuts ``train`` in two. ``property``: a numeric
    column trained as the model's property head (e.g. ``heat_all``, ``formation_energy_per_atom``); none by default.
    ``niggli``: Niggli-reduce each cell (CDVAE). ``max_rows``: read only the first rows of each file (quick runs).
    ``cache_dir`` defaults to ``$MATSIM_CACHE_DIR/crystals`` or ``~/.cache/matsim/crystals``.
    """

    train: Path
    valid: Path | None = None
    split: SplitSection = Field(default_factory=lambda: SplitSection(valid=0.1))
    property: str | None = None
    niggli: bool = True
    max_rows: int | None = Field(None, ge=1)
    cache: bool = True
    cache_dir: Path | None = None


class SpectraDataSection(StrictModel):
    """``SPECTRA.h5`` files (molecules with IR spectra, :mod:`matsim.datasets.spectra`).

    ``valid``: a separate validation file; without it ``split`` cuts ``train`` in two (``split.train_indices`` /
    ``valid_indices``: the rows of a ``matsim spectra split`` file). ``max_rows``: read only the first molecules of
    each file (quick runs).

    ``structures``: a ``STRUCTURES.h5`` file (``matsim spectra conformers``) of molecules without spectra that
    join the training set with the null condition only, so the structure prior learns from many more molecules
    than have spectra; every compound of the spectra file outside its training rows (validation, test) is left
    out of it. ``spectra_repeat``: each training molecule with a spectrum appears this many times per epoch, so
    that the spectra are not drowned by the structures.
    """

    train: Path
    valid: Path | None = None
    split: SplitSection = Field(default_factory=lambda: SplitSection(valid=0.1))
    max_rows: int | None = Field(None, ge=1)
    structures: Path | None = None
    spectra_repeat: int = Field(1, ge=1)


#: ``data`` fields that shape the training set after the split (``GenerativeModel.training_set``), not the reading
#: of a data file.
TRAINING_SET_FIELDS: tuple[str, ...] = ("structures", "spectra_repeat")


class GenerativeTrainConfig(StrictModel):
    """A training run of a generative model (see the module docstring)."""

    run_dir: Path
    seed: int = 0
    device: DeviceName = "auto"
    model: GenerativeModelSection
    data: CrystalDataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    training: TrainingSection = Field(default_factory=TrainingSection)

    def resolve_paths(self, base: Path) -> "GenerativeTrainConfig":
        """A copy with relative paths made absolute against ``base`` (the YAML file's folder)."""

        fix = functools.partial(resolve_path, base=base)

        data = self.data.model_copy(update={key: fix(value) for key, value in self.data if isinstance(value, Path)})
        model = self.model
        if model.init_from is not None:
            model = model.model_copy(update={"init_from": fix(model.init_from)})
        return self.model_copy(update={"run_dir": fix(self.run_dir), "data": data, "model": model})

    def to_plain(self) -> dict[str, Any]:
        """A JSON-like dict (paths as strings) for checkpoints and the run folder."""
        return self.model_dump(mode="json")


class SpectraTrainConfig(GenerativeTrainConfig):
    """A training run of a generative model of molecules from spectra (``data``: :class:`SpectraDataSection`)."""

    data: SpectraDataSection


#: The config class of each ``dataset_kind`` of a generative model.
CONFIG_CLASSES: dict[str, type[GenerativeTrainConfig]] = {"crystals": GenerativeTrainConfig,
                                                          "spectra": SpectraTrainConfig}


def load_generative_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GenerativeTrainConfig:
    """Read and validate a generative training YAML (with ``key.path=value`` overrides); paths against its folder.
    The ``data`` section is that of the named model's ``dataset_kind`` (crystals for an unknown model, which the
    trainer then reports)."""
    from matsim.core.errors import MatsimError
    from matsim.models import model_class

    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    name = data.get("model", {}).get("name") if isinstance(data.get("model"), dict) else None
    try:
        kind = getattr(model_class(name), "dataset_kind", "crystals") if isinstance(name, str) else "crystals"
    except MatsimError:
        kind = "crystals"
    config = validate_config(CONFIG_CLASSES[kind], data, source=str(path))
    return config.resolve_paths(path.resolve().parent)


def is_generative_config(config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a training YAML names a registered generative model (``model.name``); False when it names none,
    names an unknown model or is unreadable (the potentials' loader then reports the problem).

    Only the named model's module is imported: a potential's config never loads the generative stack (pymatgen).
    A class can only be generative if :mod:`matsim.models.generative` was imported by its module."""
    from matsim.core.errors import MatsimError
    from matsim.models import model_class

    try:
        data = apply_overrides(read_yaml(config_path), overrides)
        name = (data.get("model") or {}).get("name")
        if not isinstance(name, str):
            return False
        cls = model_class(name)
    except (MatsimError, AttributeError):
        return False
    generative = sys.modules.get("matsim.models.generative")
    return generative is not None and issubclass(cls, generative.GenerativeModel)
