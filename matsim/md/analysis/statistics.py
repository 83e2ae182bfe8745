"""Estimates with standard errors, unit conversions and block averaging of time series.

Units and conventions: see :mod:`matsim.md.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from matsim.core.errors import ConfigError
from matsim.core.units import ELEMENTARY_CHARGE_C


#: Multiply a diffusion coefficient in Å²/fs by this to get cm²/s.
A2_PER_FS_TO_CM2_PER_S = 1e-16 / 1e-15
#: Multiply a conductivity in S/m by this to get mS/cm.
S_PER_M_TO_MS_PER_CM = 10.0
#: Multiply a viscosity in eV·fs/Å³ by this to get mPa·s.
EV_FS_PER_A3_TO_MPA_S = ELEMENTARY_CHARGE_C / 1e-30 * 1e-15 * 1e3


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error (same units)."""

    value: float
    error: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "error": _finite(self.error)}


def _finite(x: float) -> float | None:
    """JSON has no NaN: map non-finite numbers to None."""
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class BlockAverage:
    """Flyvbjerg–Petersen blocking of a time series.

    Attributes:
        mean: the series mean; error: standard error of the mean at the chosen blocking level.
        block_sizes, errors, error_errors: (L,) per blocking level, the block size (samples), the standard-error
            estimate and its own uncertainty. level: the chosen level. converged: a plateau was found before the
            coarsest level (if False, ``error`` is a lower bound).
    """

    mean: float
    error: float
    level: int
    converged: bool
    block_sizes: np.ndarray
    errors: np.ndarray
    error_errors: np.ndarray

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.mean, self.error)


def block_average(series: Sequence[float] | np.ndarray, min_blocks: int = 4) -> BlockAverage:
    """Mean of a correlated series (T,) with its Flyvbjerg–Petersen standard error.

    The series is halved repeatedly by averaging neighbours while at least ``min_blocks`` blocks remain. The chosen
    level is the first whose error estimate is not exceeded, beyond two combined error bars, by any coarser level.
    A series shorter than ``min_blocks`` (but of at least two samples) gets the plain standard error of its samples,
    marked not converged: a lower bound for correlated data.
    """
    x = np.asarray(series, dtype=float).ravel()
    if len(x) < 2:
        return BlockAverage(float(np.mean(x)) if len(x) else np.nan, np.nan, 0, False,
                            np.array([1]), np.array([np.nan]), np.array([np.nan]))
    sizes, errors, error_errors = [], [], []
    size = 1
    while len(x) >= min_blocks or not errors:  # the unblocked level always, coarser ones while min_blocks remain
        n = len(x)
        sem = np.sqrt(np.var(x) / (n - 1))
        sizes.append(size)
        errors.append(sem)
        error_errors.append(sem / np.sqrt(2.0 * (n - 1)))
        x = 0.5 * (x[: n // 2 * 2 : 2] + x[1 : n // 2 * 2 : 2])
        size *= 2
    errors_a, error_errors_a = np.array(errors), np.array(error_errors)
    level = _plateau_level(errors_a, error_errors_a)
    return BlockAverage(float(np.mean(series)), float(errors_a[level]), level, level < len(errors_a) - 1,
                        np.array(sizes), errors_a, error_errors_a)


def _plateau_level(errors: np.ndarray, error_errors: np.ndarray) -> int:
    for k in range(len(errors)):
        later = slice(k + 1, None)
        if np.all(errors[later] - errors[k] <= 2.0 * np.hypot(error_errors[later], error_errors[k])):
            return k
    return len(errors) - 1


def _time_blocks(n_frames: int, n_blocks: int, min_frames: int) -> list[slice]:
    """``n_blocks`` contiguous frame slices of equal length; ConfigError if a block would be shorter than
    ``min_frames``."""
    length = n_frames // n_blocks
    if length < min_frames:
        raise ConfigError(f"{n_blocks} blocks of {n_frames} frames are {length} frames each; the analysis window "
                          f"needs at least {min_frames}: use fewer blocks, a shorter window or a longer trajectory")
    return [slice(b * length, (b + 1) * length) for b in range(n_blocks)]


def _standard_error(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.nan
