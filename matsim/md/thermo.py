"""Thermodynamic observables of an MD state and the ``thermo.csv`` writer.

Columns of ``thermo.csv`` (one row every ``output.thermo_every`` steps of each stage):

``step`` (global step counter over all stages), ``time_fs`` (simulated time; minimisation steps do not advance it),
``stage`` (stage label), ``T_K``, ``P_bar`` (from the stress including the kinetic term; empty if the calculator gives
no stress), ``density_g_cm3``, ``volume_A3``, ``epot_eV``, ``ekin_eV``, ``etot_eV``, ``conserved_eV`` (the
integrator's conserved quantity where it has one: Nosé-Hoover chain and MTK extended energies, Bussi's total energy
minus the energy the thermostat put in; empty for Langevin, Berendsen and minimisation) and ``fmax_eV_A`` (largest
atomic force).

Rows are flushed as they are written; on resume the file is cut back to its size at the checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3, BAR_TO_EV_PER_A3

__all__ = ["THERMO_COLUMNS", "thermo_row", "ThermoWriter", "conserved_energy"]

THERMO_COLUMNS = ("step", "time_fs", "stage", "T_K", "P_bar", "density_g_cm3", "volume_A3", "epot_eV", "ekin_eV",
                  "etot_eV", "conserved_eV", "fmax_eV_A")


def _stress_or_none(atoms: Atoms) -> np.ndarray | None:
    try:
        return atoms.get_stress(voigt=False, include_ideal_gas=True)
    except (PropertyNotImplementedError, NotImplementedError):
        return None


def conserved_energy(dyn: Any, atoms: Atoms) -> float | None:
    """The integrator's conserved quantity in eV, or None where it has none."""
    if dyn is None:
        return None
    if hasattr(dyn, "get_conserved_energy"):
        return float(dyn.get_conserved_energy())
    if hasattr(dyn, "transferred_energy"):  # Bussi
        return float(atoms.get_potential_energy() + atoms.get_kinetic_energy() - dyn.transferred_energy)
    return None


def thermo_row(atoms: Atoms, step: int, time_fs: float, stage: str, dyn: Any = None) -> dict[str, Any]:
    """One row of observables of the current state (calculator results are reused, not recomputed)."""
    epot = float(atoms.get_potential_energy())
    ekin = float(atoms.get_kinetic_energy())
    volume = float(atoms.get_volume())
    stress = _stress_or_none(atoms)
    forces = atoms.get_forces()
    return {
        "step": step,
        "time_fs": time_fs,
        "stage": stage,
        "T_K": float(atoms.get_temperature()),
        "P_bar": None if stress is None else float(-np.trace(stress) / 3.0 / BAR_TO_EV_PER_A3),
        "density_g_cm3": float(atoms.get_masses().sum() / volume * AMU_PER_A3_TO_G_PER_CM3),
        "volume_A3": volume,
        "epot_eV": epot,
        "ekin_eV": ekin,
        "etot_eV": epot + ekin,
        "conserved_eV": conserved_energy(dyn, atoms),
        "fmax_eV_A": float(np.sqrt((forces**2).sum(axis=1)).max()),
    }


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if value is None else repr(value)
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


class ThermoWriter:
    """Append rows to ``thermo.csv`` (header written once), flushed after each row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", encoding="utf-8")
        if new:
            self._file.write(",".join(THERMO_COLUMNS) + "\n")
            self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(",".join(_format(row.get(c)) for c in THERMO_COLUMNS) + "\n")
        self._file.flush()

    def sync(self) -> int:
        """Flush to disk; the file size in bytes (recorded in checkpoints)."""
        self._file.flush()
        import os

        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
