"""Blow-up detection for MD: stop cleanly, name what happened and when, keep the last good frame.

Checks (thresholds from :class:`matsim.md.config.WatchdogConfig`):

- non-finite positions, momenta, forces or energy (every step);
- two atoms closer than ``min_distance`` Å (periodic images included; vesin neighbour list);
- an atomic force above ``max_force`` eV/Å (MD stages);
- the kinetic temperature above ``max_temperature_factor`` × the stage's target.

Every state that passes a full check is remembered; on a failure the remembered frame is written to
``last_good.extxyz`` and :class:`MDBlowUp` is raised (a :class:`~matsim.core.errors.MatsimError`: the CLI prints
the message and exits non-zero). Output written up to the failure stays on disk.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from vesin import NeighborList

from matsim.core.errors import MatsimError

__all__ = ["MDBlowUp", "Watchdog"]


class MDBlowUp(MatsimError, RuntimeError):
    """The simulation blew up (overlapping atoms, huge forces, runaway temperature, NaN)."""

    exit_code = 3


class Watchdog:
    """Checks MD states; remembers the last good one.

    Args:
        min_distance, max_force, max_temperature_factor: thresholds (Å, eV/Å, × target).
        last_good_path: where the last good frame goes when a check fails.
    """

    def __init__(self, min_distance: float, max_force: float, max_temperature_factor: float,
                 last_good_path: str | Path, enabled: bool = True) -> None:
        self.min_distance = min_distance
        self.max_force = max_force
        self.max_temperature_factor = max_temperature_factor
        self.last_good_path = Path(last_good_path)
        self.enabled = enabled
        self.last_good: Atoms | None = None
        self.last_good_step: int | None = None

    def remember(self, atoms: Atoms, step: int, stage: str) -> None:
        """Keep a copy of ``atoms`` (positions, momenta, cell, arrays) as the last good frame."""
        frame = atoms.copy()
        frame.info.update(step=step, stage=stage)
        self.last_good, self.last_good_step = frame, step

    def check_finite(self, atoms: Atoms, forces: np.ndarray, step: int, stage: str) -> None:
        """Cheap per-step check: NaN or inf anywhere in positions, momenta, forces."""
        if not self.enabled:
            return
        for name, values in (("forces", forces), ("positions", atoms.positions), ("momenta", atoms.get_momenta())):
            if not np.isfinite(values).all():
                bad = int(np.argwhere(~np.isfinite(values))[0][0])
                self._fail(f"non-finite {name} (atom {bad})", step, stage)

    def check(self, atoms: Atoms, forces: np.ndarray, step: int, stage: str, target_temperature: float | None,
              check_forces: bool = True) -> None:
        """Full check; on success the state becomes the last good frame."""
        if not self.enabled:
            self.remember(atoms, step, stage)
            return
        self.check_finite(atoms, forces, step, stage)
        symbols = atoms.get_chemical_symbols()
        if len(atoms) > 1:
            periodic = bool(atoms.pbc.all())
            box = atoms.cell.array if periodic else np.zeros((3, 3))
            i, j, d = NeighborList(cutoff=self.min_distance, full_list=False).compute(
                atoms.positions, box, periodic, "ijd")
            if len(d):
                k = int(np.argmin(d))
                self._fail(f"atoms {i[k]} ({symbols[i[k]]}) and {j[k]} ({symbols[j[k]]}) are {d[k]:.3f} Å apart "
                           f"(minimum {self.min_distance} Å)", step, stage)
        if check_forces:
            norms = np.sqrt((forces**2).sum(axis=1))
            k = int(np.argmax(norms))
            if norms[k] > self.max_force:
                self._fail(f"force on atom {k} ({symbols[k]}) is {norms[k]:.1f} eV/Å (limit {self.max_force} eV/Å)",
                           step, stage)
        if target_temperature is not None:
            temperature = float(atoms.get_temperature())
            limit = self.max_temperature_factor * target_temperature
            if temperature > limit:
                self._fail(f"temperature {temperature:.0f} K exceeds {self.max_temperature_factor:g} × the target "
                           f"{target_temperature:g} K", step, stage)
        self.remember(atoms, step, stage)

    def _fail(self, what: str, step: int, stage: str) -> None:
        message = f"watchdog stopped the run at step {step} (stage {stage}): {what}"
        if self.last_good is not None:
            ase.io.write(self.last_good_path, self.last_good, format="extxyz")
            message += f"; the last good frame (step {self.last_good_step}) is in {self.last_good_path}"
        else:
            message += "; there is no earlier good frame"
        message += ". Try a smaller timestep, a minimise stage first, or check the model."
        raise MDBlowUp(message)
