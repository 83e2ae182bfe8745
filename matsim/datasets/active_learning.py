"""Active learning by ensemble disagreement: label next the frames on which independently trained potentials disagree.

The disagreement of a frame is computed from the forces of M models (M ≥ 2). Per atom it is the standard deviation
of the force vector across the models, ``σ_i = sqrt(mean_m |F_mi - mean_m F_mi|²)`` in eV/Å; the frame's score is
the largest ``σ_i`` (``reduce="max"``, the default: one badly described atom is enough to make a frame worth a label)
or their mean (``reduce="mean"``).

:func:`select_by_disagreement` ranks candidate frames by that score and returns the ``n`` highest, optionally

- skipping frames below a ``floor`` (the ensemble already agrees: a label teaches little) and above a ``ceiling``
  (a disagreement that large usually means an unphysical geometry that is better left out than labelled);
- taking ``per_kind`` quotas first (e.g. ``{"contact_ion_pair": 20}``, kinds read from ``info["cluster_kind"]``),
  then filling up to ``n`` with the highest-scoring frames of any kind.

Frames a model cannot evaluate (an SCF that does not converge, for a reference calculator in the ensemble; or
non-finite forces) are counted as failed and never selected. The ensemble may mix matsim checkpoints or pretrained
names (loaded as :class:`~matsim.calculator.MatSimCalculator`), potential modules and any ASE calculators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator

from matsim.core.errors import ConfigError
from matsim.reference import SCFNotConverged

__all__ = ["Selection", "force_disagreement", "ensemble_forces", "select_by_disagreement", "as_calculators"]

ModelLike = str | Path | Calculator | torch.nn.Module


@dataclass
class Selection:
    """The outcome of :func:`select_by_disagreement`.

    Attributes:
        frames: copies of the selected frames (highest score first) with ``info["force_disagreement"]`` (eV/Å) and
            ``info["candidate_index"]`` (the frame's index among the candidates), without calculator results.
        indices: candidate indices of ``frames``.
        scores: the score of every candidate (NaN where a model failed).
        skipped: counts of candidates left out: ``failed``, ``below floor``, ``above ceiling``.
        reduce: ``"max"`` or ``"mean"``.
    """

    frames: list[Atoms]
    indices: list[int]
    scores: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    reduce: str = "max"

    def summary(self) -> dict:
        """A JSON-ready record: counts, score statistics and the chosen frames."""
        finite = self.scores[np.isfinite(self.scores)]
        stats = ({"min": float(finite.min()), "median": float(np.median(finite)), "max": float(finite.max())}
                 if finite.size else {})
        kinds: dict[str, int] = {}
        for frame in self.frames:
            kind = str(frame.info.get("cluster_kind", "unknown"))
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "candidates": int(len(self.scores)),
            "selected": len(self.frames),
            "reduce": self.reduce,
            "score_eV_per_A": stats,
            "skipped": self.skipped,
            "selected_by_kind": kinds,
            "selected_frames": [{"candidate_index": i, "force_disagreement": float(self.scores[i]),
                                 "source": str(f.info.get("source", ""))} for i, f in zip(self.indices, self.frames)],
        }


def force_disagreement(forces: np.ndarray, reduce: Literal["max", "mean"] = "max") -> float:
    """Score of one frame from its forces by M models, shape ``(M, N, 3)`` (module docstring)."""
    forces = np.asarray(forces, dtype=float)
    if forces.ndim != 3 or forces.shape[0] < 2 or forces.shape[2] != 3:
        raise ValueError(f"forces must have shape (models >= 2, atoms, 3), got {forces.shape}")
    deviation = forces - forces.mean(axis=0, keepdims=True)
    per_atom = np.sqrt((deviation**2).sum(axis=-1).mean(axis=0))
    if reduce == "max":
        return float(per_atom.max())
    if reduce == "mean":
        return float(per_atom.mean())
    raise ConfigError(f"reduce {reduce!r} is not allowed (allowed values: max, mean)")


def as_calculators(models: Sequence[ModelLike], device: str = "auto", dtype: str = "float32") -> list[Calculator]:
    """ASE calculators for an ensemble: checkpoint paths / pretrained names and potential modules become
    :class:`~matsim.calculator.MatSimCalculator`; calculators are used as they are.

    Raises:
        ConfigError: fewer than two models. CheckpointError: a missing or broken checkpoint.
    """
    if len(models) < 2:
        raise ConfigError(f"an ensemble needs at least 2 models, got {len(models)}")
    out = []
    for model in models:
        if isinstance(model, Calculator):
            out.append(model)
        else:
            from matsim.calculator import MatSimCalculator

            out.append(MatSimCalculator(model, device=device, dtype=dtype))
    return out


def ensemble_forces(frame: Atoms, calculators: Sequence[Calculator]) -> np.ndarray | None:
    """Forces ``(M, N, 3)`` of ``frame`` by each calculator; None when one fails to converge or gives non-finite
    forces."""
    forces = []
    for calc in calculators:
        atoms = frame.copy()
        atoms.calc = calc
        try:
            f = np.asarray(atoms.get_forces(), dtype=float)
        except SCFNotConverged:
            return None
        if not np.isfinite(f).all():
            return None
        forces.append(f)
    return np.stack(forces)


def select_by_disagreement(
    frames: Sequence[Atoms],
    models: Sequence[ModelLike],
    n: int,
    reduce: Literal["max", "mean"] = "max",
    floor: float | None = None,
    ceiling: float | None = None,
    per_kind: dict[str, int] | None = None,
    kind_key: str = "cluster_kind",
    device: str = "auto",
    dtype: str = "float32",
) -> Selection:
    """The ``n`` frames of ``frames`` with the largest ensemble force disagreement (module docstring).

    Args:
        models: the ensemble (at least two): checkpoint paths, pretrained names, potential modules, ASE calculators.
        n: how many frames to select (fewer come back when fewer are eligible).
        reduce: ``"max"`` or ``"mean"`` over atoms of the per-atom force standard deviation.
        floor, ceiling: eV/Å; eligible frames score in ``[floor, ceiling]``.
        per_kind: frames of each ``info[kind_key]`` value taken first (their sum may not exceed ``n``).

    Raises:
        ConfigError: bad ``n``, ``floor`` above ``ceiling``, quotas above ``n``, fewer than two models.
    """
    if n < 1:
        raise ConfigError(f"the number of frames to select must be positive, got {n}")
    if floor is not None and ceiling is not None and floor > ceiling:
        raise ConfigError(f"floor ({floor}) is above ceiling ({ceiling})")
    quotas = {k: int(v) for k, v in (per_kind or {}).items() if v}
    if sum(quotas.values()) > n:
        raise ConfigError(f"per-kind quotas add up to {sum(quotas.values())}, more than the {n} frames to select")
    if reduce not in ("max", "mean"):
        raise ConfigError(f"reduce {reduce!r} is not allowed (allowed values: max, mean)")
    calculators = as_calculators(models, device=device, dtype=dtype)
    scores = np.full(len(frames), np.nan)
    for k, frame in enumerate(frames):
        forces = ensemble_forces(frame, calculators)
        if forces is not None:
            scores[k] = force_disagreement(forces, reduce)
    failed = ~np.isfinite(scores)
    below = np.zeros(len(frames), bool) if floor is None else np.isfinite(scores) & (scores < floor)
    above = np.zeros(len(frames), bool) if ceiling is None else np.isfinite(scores) & (scores > ceiling)
    eligible = ~failed & ~below & ~above
    ranked = [int(i) for i in np.argsort(-np.where(eligible, scores, -np.inf), kind="stable") if eligible[i]]
    chosen: list[int] = []
    for kind, quota in quotas.items():
        chosen += [i for i in ranked if frames[i].info.get(kind_key) == kind][:quota]
    taken = set(chosen)
    chosen += [i for i in ranked if i not in taken][: n - len(chosen)]
    chosen.sort(key=lambda i: -scores[i])
    selected = []
    for i in chosen:
        copy = frames[i].copy()
        copy.calc = None
        copy.info["force_disagreement"] = float(scores[i])
        copy.info["candidate_index"] = i
        selected.append(copy)
    skipped = {"failed": int(failed.sum()), "below floor": int(below.sum()), "above ceiling": int(above.sum())}
    return Selection(selected, chosen, scores, skipped, reduce)
