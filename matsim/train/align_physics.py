"""The physics of density alignment (:mod:`matsim.train.align`), as pure functions: the pressure correction and
its inverse, the shifted stress target, the finite-difference compressibility, rescaling a liquid box to a density
with whole molecules, and second-half averages of a ``thermo.csv``.

Units: density g/cm³ (or any one unit where stated), pressure bar, compressibility 1/bar, stress eV/Å³ (ASE's sign).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from ase import Atoms, units

from matsim.core.errors import MatsimError
from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3
from matsim.md.analysis.statistics import block_average

__all__ = ["pressure_correction_bar", "estimated_density_error", "shifted_stress", "finite_difference_compressibility",
           "clamp_compressibility", "density_of", "scale_to_density", "stage_average"]


def pressure_correction_bar(density_model: float, density_experiment: float, compressibility_per_bar: float) -> float:
    """ΔP = (ρ_model − ρ_exp) / (ρ_exp · κ_T) in bar (densities in any one unit, κ_T in 1/bar).

    Linear response: a pressure higher by ΔP compresses the liquid by Δρ/ρ = κ_T ΔP, so a model too dense by Δρ
    needs ΔP > 0 more pressure at ρ_exp (its labels push outward) to expand to ρ_exp at the target pressure.
    """
    if not compressibility_per_bar > 0:
        raise ValueError(f"compressibility must be positive, got {compressibility_per_bar}")
    return (density_model - density_experiment) / (density_experiment * compressibility_per_bar)


def estimated_density_error(correction_bar: float, density_experiment: float, compressibility_per_bar: float) -> float:
    """Δρ ≈ ρ_exp κ_T ΔP (units of ``density_experiment``): the density error that a pressure correction
    ``correction_bar`` = P_target − P_model(ρ_exp) stands for, the inverse of :func:`pressure_correction_bar`."""
    return density_experiment * compressibility_per_bar * correction_bar


def shifted_stress(stress: np.ndarray, correction_bar: float) -> np.ndarray:
    """(3, 3) stress target σ − ΔP·I in eV/Å³ (ASE's sign, P = −tr σ / 3) for a pressure higher by ``correction_bar``."""
    return np.asarray(stress, dtype=np.float64).reshape(3, 3) - correction_bar * units.bar * np.eye(3)


def finite_difference_compressibility(pressure_low_bar: float, pressure_high_bar: float, strain: float) -> float:
    """κ_T = (1/ρ)(∂ρ/∂P) ≈ 2δ / (P(ρ₀(1+δ)) − P(ρ₀(1−δ))) in 1/bar, from the mean pressures at the densities
    ρ₀(1 − δ) (``pressure_low_bar``) and ρ₀(1 + δ) (``pressure_high_bar``), δ = ``strain``. Exact for a linear
    P(ρ); not positive (inf or negative) when the pressure does not rise with density."""
    difference = pressure_high_bar - pressure_low_bar
    return 2.0 * strain / difference if difference != 0 else math.inf


def clamp_compressibility(value: float, low: float, high: float) -> tuple[float, str | None]:
    """``value`` clamped to [low, high] (1/bar) with a note saying why, or unchanged with None. A non-positive or
    non-finite value (pressure not rising with density) becomes ``high``: the smallest correction."""
    if not math.isfinite(value) or value <= 0:
        return high, f"κ_T estimate {value:.3g} 1/bar is not positive (the pressure does not rise with density); " \
                     f"using {high:.3g}"
    if value < low:
        return low, f"κ_T estimate {value:.3g} 1/bar is below {low:.3g}; clamped"
    if value > high:
        return high, f"κ_T estimate {value:.3g} 1/bar is above {high:.3g}; clamped"
    return value, None


def density_of(atoms: Atoms) -> float:
    """Mass density of a periodic box in g/cm³."""
    return float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_TO_G_PER_CM3)


def scale_to_density(atoms: Atoms, density_g_cm3: float) -> Atoms:
    """A copy of the periodic box ``atoms`` scaled isotropically to ``density_g_cm3``.

    With ``arrays["mol_id"]`` the cell and each molecule's centre of mass are scaled and every molecule is moved
    rigidly (intramolecular geometry kept, also for molecules split across the boundary: the centre is taken over
    minimum-image positions relative to the molecule's first atom); without it, all positions are scaled.
    """
    out = atoms.copy()
    factor = (density_of(atoms) / density_g_cm3) ** (1.0 / 3.0)
    cell = np.asarray(out.cell.array)
    positions = np.asarray(out.positions)
    if "mol_id" in out.arrays:
        mol = np.asarray(out.arrays["mol_id"], dtype=int)
        _, first_index, inverse = np.unique(mol, return_index=True, return_inverse=True)
        anchor = positions[first_index][inverse]
        delta = positions - anchor
        delta -= np.round(delta @ np.linalg.inv(cell)) @ cell
        masses = out.get_masses()
        total = np.bincount(inverse, weights=masses)
        centre = np.stack([np.bincount(inverse, weights=masses * delta[:, k]) for k in range(3)], axis=1)
        centres = positions[first_index] + centre / total[:, None]
        out.positions = positions + (factor - 1.0) * centres[inverse]
    else:
        out.positions = positions * factor
    out.set_cell(cell * factor, scale_atoms=False)
    return out


def stage_average(thermo_csv: Path, stage: str, column: str) -> tuple[float, float]:
    """(mean, standard error) of ``column`` over the second half of the rows of ``stage`` in a ``thermo.csv`` of
    :func:`matsim.md.runner.run_md` (e.g. ``density_g_cm3``, ``P_bar``), the error block-averaged (:func:`block_average`: the plain
    standard error below 4 rows, NaN for one row)."""
    with open(thermo_csv, newline="") as handle:
        values = [float(r[column]) for r in csv.DictReader(handle) if r["stage"] == stage and r[column]]
    if not values:
        raise MatsimError(f"{thermo_csv}: no {column} rows of stage {stage!r} (more steps or a smaller thermo_every)")
    average = block_average(values[len(values) // 2:])
    return average.mean, average.error
