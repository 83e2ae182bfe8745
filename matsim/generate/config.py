"""The generation configuration: one YAML file, validated by :class:`GenerateConfig` (unknown keys are errors).

Example (``examples/generate_cdvae.yaml``)::

    checkpoint: ../runs/cdvae-perov5/best.pt
    num_samples: 10000
    batch_size: 500
    seed: 0
    sampler: {n_levels: 50, steps_per_level: 10, step_lr: 0.0001}   # the model's sampler settings
    condition: null                                                # e.g. {composition: CaTiO3} or {property: -1.0}
    score:
      reference: ../../shared/data/perov_5/pool.csv                  # training set: novelty, known phases
      test: null                                                     # distribution for coverage / EMD (else reference)
      dataset: perov_5                                               # CDVAE's coverage cutoffs
      oracle: none                                                   # or chgnet: hull stability and S.U.N.

``sampler`` and ``condition`` are checked against the model named by the checkpoint once it is loaded (its
``sampler_settings`` and ``condition_keys``). Relative paths are resolved against the folder of the YAML file.

A baseline instead of a model (``examples/generate_random_search.yaml``): random structure search with pyxtal
(:mod:`matsim.generate.random_search`), written and scored exactly like model samples::

    baseline: random_search
    compositions_from: ../../shared/data/perov_5/pool.csv   # draw each candidate's cell composition from a CSV
    # compositions: [SrTiO3, {formula: SrTiO3, formula_units: 2}]   # or cycle through these cells
    num_samples: 1000
    seed: 0
    sampler: {volume_factor: 1.1, max_attempts: 20, timeout_s: 30, space_groups: null, max_atoms: 100}
    score: {reference: ../../shared/data/perov_5/pool.csv, dataset: perov_5, oracle: chgnet}

``compositions_from`` draws ``num_samples`` cell compositions (atom counts as in the file's cells) uniformly with
replacement from the crystals of a CDVAE-style CSV (the training set's composition distribution); ``compositions``
gives them explicitly and candidate i takes entry ``i mod len(compositions)`` (``num_samples = N × len`` gives N
per composition). ``sampler`` is then validated against
:class:`~matsim.generate.random_search.RandomSearchSettings`; ``condition`` is for models only.

A composition-conditional model (UniMat) takes the same ``compositions_from`` / ``compositions`` plan: sample i is
conditioned on plan entry i, and with the same ``seed`` and ``num_samples`` the plan is the baseline's, so model
and random search are compared on identical compositions.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config

__all__ = ["CompositionEntry", "GenerateConfig", "ScoreSection", "load_generate_config"]


class ScoreSection(StrictModel):
    """Scoring of the samples with :func:`matsim.metrics.crystal.evaluate_crystals` (and the hull, with an oracle).

    ``reference``: training-set CSV (novelty; known phases of the hull; the comparison distribution when no
    ``test`` is given). ``test``: CSV of the distribution for coverage and EMDs (CDVAE compares with its test set).
    ``dataset``: ``perov_5`` | ``carbon_24`` | ``mp_20`` selects CDVAE's coverage cutoffs (no coverage without it;
    fingerprints are slow: ~0.1 s per structure). ``oracle``: ``none`` or ``chgnet`` (relaxes every structurally
    valid sample and the reference phases: minutes per hundred samples on a CPU).
    """

    reference: Path
    test: Path | None = None
    dataset: Literal["perov_5", "carbon_24", "mp_20"] | None = None
    oracle: Literal["none", "chgnet"] = "none"


class CompositionEntry(StrictModel):
    """One cell composition of the random-search baseline: ``formula`` (e.g. ``SrTiO3``) × ``formula_units``."""

    formula: str
    formula_units: int = Field(1, ge=1)


class GenerateConfig(StrictModel):
    """A generation run (see the module docstring): ``num_samples`` structures in batches of ``batch_size``, from a
    model ``checkpoint`` or a ``baseline`` (exactly one of the two)."""

    checkpoint: Path | None = None
    baseline: Literal["random_search"] | None = None
    compositions: list[str | CompositionEntry] | None = Field(None, min_length=1)
    compositions_from: Path | None = None
    num_samples: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    device: DeviceName = "auto"
    sampler: dict[str, Any] = Field(default_factory=dict)
    condition: dict[str, Any] | None = None
    score: ScoreSection | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "GenerateConfig":
        if (self.checkpoint is None) == (self.baseline is None):
            raise ValueError("give exactly one of 'checkpoint' (a generative model) and 'baseline' (random_search)")
        has_compositions = (self.compositions is not None, self.compositions_from is not None)
        if self.checkpoint is not None:
            if sum(has_compositions) > 1:
                raise ValueError("give at most one of 'compositions' (formulas) and 'compositions_from' (a CSV)")
            if any(has_compositions) and self.condition is not None and "composition" in self.condition:
                raise ValueError("'condition.composition' and a composition plan ('compositions' / "
                                 "'compositions_from') both fix the composition: give one")
        if self.baseline is not None:
            if sum(has_compositions) != 1:
                raise ValueError(f"baseline {self.baseline}: give exactly one of 'compositions' (formulas) and "
                                 "'compositions_from' (a CSV of crystals)")
            if self.condition is not None:
                raise ValueError(f"baseline {self.baseline}: 'condition' is for models; give the compositions in "
                                 "'compositions' or 'compositions_from'")
        return self

    def resolve_paths(self, base: Path) -> "GenerateConfig":
        """A copy with relative paths made absolute against ``base`` (the YAML file's folder)."""

        fix = functools.partial(resolve_path, base=base)

        score = None if self.score is None else self.score.model_copy(
            update={"reference": fix(self.score.reference), "test": fix(self.score.test)})
        return self.model_copy(update={"checkpoint": fix(self.checkpoint),
                                       "compositions_from": fix(self.compositions_from), "score": score})


def load_generate_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GenerateConfig:
    """Read and validate a generation YAML (with ``key.path=value`` overrides); paths against its folder."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    return validate_config(GenerateConfig, data, source=str(path)).resolve_paths(path.resolve().parent)
