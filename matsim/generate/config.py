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
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config

__all__ = ["GenerateConfig", "ScoreSection", "load_generate_config"]


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


class GenerateConfig(StrictModel):
    """A generation run (see the module docstring): ``num_samples`` structures in batches of ``batch_size``."""

    checkpoint: Path
    num_samples: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    device: DeviceName = "auto"
    sampler: dict[str, Any] = Field(default_factory=dict)
    condition: dict[str, Any] | None = None
    score: ScoreSection | None = None

    def resolve_paths(self, base: Path) -> "GenerateConfig":
        """A copy with relative paths made absolute against ``base`` (the YAML file's folder)."""

        fix = functools.partial(resolve_path, base=base)

        score = None if self.score is None else self.score.model_copy(
            update={"reference": fix(self.score.reference), "test": fix(self.score.test)})
        return self.model_copy(update={"checkpoint": fix(self.checkpoint), "score": score})


def load_generate_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GenerateConfig:
    """Read and validate a generation YAML (with ``key.path=value`` overrides); paths against its folder."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    return validate_config(GenerateConfig, data, source=str(path)).resolve_paths(path.resolve().parent)
