"""Run an MD config: build or read the box, minimise, equilibrate, produce, checkpoint, resume, analyse.

:func:`run_md` writes into the output directory:

- ``config.yaml``: the resolved config (every default filled in);
- ``initial.extxyz``: the built or read box, with ``mol_id`` and ``formal_charge``;
- ``thermo.csv``: observables every ``output.thermo_every`` steps (columns in :mod:`matsim.md.thermo`);
- ``trajectory.extxyz`` (or ``trajectory.traj``): frames of the MD stages every ``output.trajectory_every`` steps
  with positions, momenta, forces, energy, stress, ``mol_id``, ``formal_charge`` and ``info`` ``step``, ``time_fs``,
  ``stage`` (one file for all stages; the analysis picks its stage's frames);
- ``minimised.extxyz`` after a minimise stage; ``final.extxyz`` at the end;
- ``checkpoint.npz`` (and the one before it, ``checkpoint.prev.npz``): see below;
- ``run.json``: model, device, atoms, and per stage wall time, steps/s and ns/day;
- ``analysis.json`` and ``plots/*.png`` (:mod:`matsim.md.analysis`, :mod:`matsim.md.plots`); ``analysis.json`` also
  says whether every molecule kept its bonds (:mod:`matsim.md.analysis.topology`), with a warning when not;
- ``last_good.extxyz`` only when the watchdog stopped the run.

Checkpoints and exact resume. A checkpoint is a NumPy ``.npz`` (data only; loaded with ``allow_pickle=False``)
holding, in float64: positions, momenta, cell, numbers, pbc, ``mol_id``, ``formal_charge``; the integrator's own
state (Nosé-Hoover chain positions and momenta η, p_η; MTK barostat ξ, p_ξ, ε, p_ε and its reference cell;
Bussi's transferred energy); and a JSON record of the stage index, the step within the stage, the global step and
time, the NumPy ``PCG64`` generator state (initial velocities, Langevin and Bussi noise all draw from this one
generator, seeded by ``seed``), and the byte sizes of ``thermo.csv`` and the trajectory at that moment. It is
written every ``output.checkpoint_every`` steps, at the start and at the end of every stage, atomically (a temporary
file, fsync, ``os.replace``), after the output files were flushed to disk. ``resume=True`` restores all of it, cuts
``thermo.csv`` and the trajectory back to their checkpointed sizes (rows written after the checkpoint by a killed run
would otherwise be duplicated), rebuilds the integrator and overwrites its state: the continued run performs the same
floating-point operations as an uninterrupted one, so the trajectories agree to the last bit for a deterministic
calculator (the test checks 1e-10 Å).

Errors a user can cause end in :class:`~matsim.core.errors.MatsimError` subclasses: a bad config
(:class:`ConfigError`), a missing structure file (:class:`InputFileError`), overlapping atoms
(:class:`StructureError`), a missing checkpoint (:class:`CheckpointError`), a blow-up (:class:`MDBlowUp`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import ase.io
import numpy as np
import yaml
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from matsim._version import __version__
from matsim.calculator import MatSimCalculator
from matsim.core.errors import CheckpointError, ConfigError, MatsimError
from matsim.md.config import ANALYSES, MDConfig, StageConfig, load_md_config
from matsim.md.thermo import ThermoWriter, thermo_row
from matsim.md.watchdog import MDBlowUp, Watchdog

if TYPE_CHECKING:
    from matsim.md.analysis.topology import TopologyReport

__all__ = ["run_md", "analyze_output", "make_calculator", "make_dynamics", "MDResult", "MDBlowUp",
           "CHECKPOINT_NAME", "MDCalculator", "model_caveat", "run_topology"]

CHECKPOINT_NAME = "checkpoint.npz"
_PREVIOUS_CHECKPOINT = "checkpoint.prev.npz"
_CHECKPOINT_VERSION = 1

#: Attributes (dotted paths) that hold an integrator's state between steps, by class name. Everything else an ASE
#: integrator keeps is a parameter rebuilt from the config or recomputed from the atoms.
_DYNAMICS_STATE = {
    "NoseHooverChainNVT": ("_thermostat._eta", "_thermostat._p_eta"),
    "IsotropicMTKNPT": ("_thermostat._eta", "_thermostat._p_eta", "_barostat._xi", "_barostat._p_xi", "_eps",
                        "_p_eps", "_cell0", "_volume0"),
    "Bussi": ("transferred_energy",),
    "Langevin": (),
    "NPTBerendsen": (),
}


# ------------------------------------------------------------------------------------------------ calculators


class MDCalculator(MatSimCalculator):
    """:class:`MatSimCalculator` that returns the stress with every evaluation of a periodic box.

    For a conservative model the stress is the virial of the edge forces the force pass already has (nearly free),
    and MD wants it for the pressure in ``thermo.csv`` and in trajectory frames (Green-Kubo viscosity) without a
    second force evaluation. A direct-force model gets its forces without a backward pass, and a stress would cost
    one: it computes the stress only when asked (output steps, and every step of a barostat).
    """

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        properties = list(properties or ["energy"])
        box = atoms if atoms is not None else self.atoms
        free_stress = not self.potential.direct_forces
        if free_stress and "stress" not in properties and box is not None and bool(np.all(box.pbc)):
            properties.append("stress")
        super().calculate(atoms, properties, system_changes)


def model_caveat(calc: Calculator) -> str | None:
    """The ``caveat`` a matsim model's checkpoint carries in its metadata (e.g. a preliminary shipped model whose
    known failures the user must hear about), else None."""
    potential = getattr(calc, "potential", None)
    return (getattr(potential, "metadata", None) or {}).get("caveat")


def make_calculator(config: MDConfig) -> Calculator:
    """The ASE calculator of ``config.model``: GFN-xTB for ``xtb`` / ``xtb-gfn1``, SevenNet for ``sevennet:NAME``
    (e.g. ``sevennet:7net-0``, a universal potential for sampling configurations; needs ``pip install sevenn``),
    else a matsim potential (shipped pretrained name or checkpoint path) on ``config.device`` in ``config.dtype``."""
    name = config.model.strip().lower()
    if name.startswith("sevennet:"):
        try:
            from sevenn.calculator import SevenNetCalculator
        except ImportError as exc:
            raise MatsimError(f"model {config.model!r} needs SevenNet: pip install sevenn ({exc})") from exc
        from matsim.models import resolve_device

        device = str(resolve_device(config.device))
        return SevenNetCalculator(model=config.model.split(":", 1)[1].strip(), device=device)
    if name in ("xtb", "xtb-gfn2", "gfn2-xtb", "xtb-gfn1", "gfn1-xtb"):
        try:
            from matsim.reference.xtb import XTBCalculator
        except ImportError as exc:
            raise MatsimError(f"model 'xtb' needs tblite: pip install 'matsim[dft]' ({exc})") from exc
        return XTBCalculator("gfn1" if "gfn1" in name else "gfn2")
    return MDCalculator(config.model, device=config.device, dtype=config.dtype, compile=config.compile)


# -------------------------------------------------------------------------------------------------- dynamics


def make_dynamics(stage: StageConfig, atoms: Atoms, rng: np.random.Generator) -> Any:
    """The ASE integrator of an ``nvt`` or ``npt`` stage (see :mod:`matsim.md.config` for the choices)."""
    dt = stage.timestep_fs * units.fs
    temperature = float(stage.temperature_K)
    tdamp = stage.tdamp_fs * units.fs
    if stage.kind == "npt":
        pressure = stage.pressure_bar * units.bar
        if stage.barostat == "mtk":
            from ase.md.nose_hoover_chain import IsotropicMTKNPT

            return IsotropicMTKNPT(atoms, dt, temperature_K=temperature, pressure_au=pressure, tdamp=tdamp,
                                   pdamp=stage.pdamp_fs * units.fs, tchain=stage.tchain, pchain=stage.tchain)
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=temperature, pressure_au=pressure, taut=tdamp,
                            taup=stage.pdamp_fs * units.fs,
                            compressibility_au=stage.compressibility_per_bar / units.bar)
    thermostat = stage.resolved_thermostat
    if thermostat == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature, friction=stage.friction_per_fs / units.fs,
                        fixcm=False, rng=rng)
    if thermostat == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=temperature, taut=tdamp, rng=rng)
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(atoms, dt, temperature_K=temperature, tdamp=tdamp, tchain=stage.tchain)


def _dynamics_state(dyn: Any) -> dict[str, np.ndarray]:
    out = {}
    for path in _DYNAMICS_STATE.get(type(dyn).__name__, ()):
        obj = dyn
        *parents, last = path.split(".")
        for part in parents:
            obj = getattr(obj, part)
        out[path] = np.array(getattr(obj, last), dtype=np.float64)
    return out


def _restore_dynamics_state(dyn: Any, state: dict[str, np.ndarray]) -> None:
    expected = set(_DYNAMICS_STATE.get(type(dyn).__name__, ()))
    if set(state) != expected:
        raise CheckpointError(f"the checkpoint holds integrator state {sorted(state)}, but {type(dyn).__name__} "
                              f"needs {sorted(expected)}: was the stage's thermostat or barostat changed?")
    for path, value in state.items():
        obj = dyn
        *parents, last = path.split(".")
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, float(value) if value.ndim == 0 else np.array(value))


# ---------------------------------------------------------------------------------------------- run state


@dataclass
class _State:
    """Where the run is; everything here goes into the checkpoint's JSON record."""

    stage: int = 0
    stage_step: int = 0
    step: int = 0
    time_fs: float = 0.0
    thermo_bytes: int = 0
    trajectory_bytes: int = 0
    trajectory_frames: int = 0
    rng_state: dict = field(default_factory=dict)
    source_hash: str = ""
    version: int = _CHECKPOINT_VERSION


@dataclass
class MDResult:
    """What :func:`run_md` did: the output directory, global steps, simulated time, analysis summary (or None),
    and the stage timings (also in ``run.json``)."""

    output_dir: Path
    steps: int
    time_fs: float
    analysis: dict | None
    timings: list[dict]


def _source_hash(config: MDConfig) -> str:
    """What must not change between a run and its resume: the system or structure, and the model."""
    data = config.model_dump(mode="json", include={"system", "structure", "model"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _info_json(atoms: Atoms) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return json.dumps({k: plain(v) for k, v in atoms.info.items()})


def _write_checkpoint(directory: Path, atoms: Atoms, state: _State, dyn: Any) -> None:
    arrays: dict[str, np.ndarray] = {
        "numbers": atoms.numbers.astype(np.int64),
        "positions": np.asarray(atoms.positions, dtype=np.float64),
        "momenta": np.asarray(atoms.get_momenta(), dtype=np.float64),
        "cell": np.asarray(atoms.cell.array, dtype=np.float64),
        "pbc": np.asarray(atoms.pbc, dtype=bool),
        "state_json": np.array(json.dumps(asdict(state))),
        "info_json": np.array(_info_json(atoms)),
    }
    for name in ("mol_id", "formal_charge"):
        if name in atoms.arrays:
            arrays[name] = np.asarray(atoms.arrays[name], dtype=np.int64)
    for path, value in (_dynamics_state(dyn) if dyn is not None else {}).items():
        arrays[f"dyn:{path}"] = value
    target = directory / CHECKPOINT_NAME
    temporary = directory / (CHECKPOINT_NAME + ".tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    if target.exists():
        os.replace(target, directory / _PREVIOUS_CHECKPOINT)
    os.replace(temporary, target)


def _read_checkpoint(directory: Path) -> tuple[Atoms, _State, dict[str, np.ndarray]]:
    candidates = [directory / CHECKPOINT_NAME, directory / _PREVIOUS_CHECKPOINT]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise CheckpointError(f"no checkpoint to resume from in {directory} (expected {CHECKPOINT_NAME}); "
                              "run without --resume to start")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        state = _State(**json.loads(str(arrays["state_json"])))
        atoms = Atoms(numbers=arrays["numbers"], positions=arrays["positions"], cell=arrays["cell"],
                      pbc=arrays["pbc"])
        for name in ("mol_id", "formal_charge"):  # before momenta: the same array order as a fresh run's frames
            if name in arrays:
                atoms.arrays[name] = arrays[name].astype(int)
        atoms.set_momenta(arrays["momenta"])
        atoms.info.update(json.loads(str(arrays["info_json"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if state.version != _CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.version}; this matsim reads "
                              f"{_CHECKPOINT_VERSION}")
    dyn_state = {k[4:]: v for k, v in arrays.items() if k.startswith("dyn:")}
    return atoms, state, dyn_state


# ------------------------------------------------------------------------------------------------ writers


class _TrajectoryWriter:
    """Appends frames to ``trajectory.extxyz`` (flushed per frame) or ``trajectory.traj``."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.format = path, fmt
        if fmt == "extxyz":
            self._file = open(path, "a", encoding="utf-8")
            self._traj = None
        else:
            from ase.io.trajectory import Trajectory

            self._file = None
            self._traj = Trajectory(str(path), "a")
        self.frames = 0

    def write(self, frame: Atoms) -> None:
        if self._file is not None:
            ase.io.write(self._file, frame, format="extxyz")
            self._file.flush()
        else:
            self._traj.write(frame)
        self.frames += 1

    def sync(self) -> int:
        """Flush to disk; the size in bytes."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            return self._file.tell()
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._traj is not None:
            self._traj.close()


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)


def _truncate_traj_frames(path: Path, frames: int) -> None:
    """Keep the first ``frames`` frames of an ASE .traj file (rewritten atomically if it has more)."""
    from ase.io.trajectory import Trajectory

    if not path.exists():
        return
    with Trajectory(str(path)) as reader:
        if len(reader) <= frames:
            return
        kept = [reader[i] for i in range(frames)]
    temporary = path.with_suffix(".traj.tmp")
    with Trajectory(str(temporary), "w") as writer:
        for frame in kept:
            writer.write(frame)
    os.replace(temporary, path)


def _frame(atoms: Atoms, step: int, time_fs: float, stage: str) -> Atoms:
    """A copy of the current state with its calculator results attached (for extxyz/traj)."""
    frame = atoms.copy()
    frame.info.update(step=step, time_fs=float(time_fs), stage=stage)
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    stress = atoms.calc.results.get("stress") if atoms.calc is not None else None
    if stress is None:
        try:
            stress = atoms.get_stress()
        except Exception:  # noqa: BLE001 - a calculator without stress simply gives frames without it
            stress = None
    if stress is not None:
        results["stress"] = np.asarray(stress)
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


# --------------------------------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr with ns/day, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                      console=Console(stderr=True))
            self._progress.start()
        self._task = None

    def stage(self, name: str, total: int, done: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total, completed=done, info="")

    def update(self, done: int, info: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _ns_per_day(simulated_fs: float, wall_s: float) -> float:
    return simulated_fs * 1e-6 / wall_s * 86400.0 if wall_s > 0 else float("nan")


# ------------------------------------------------------------------------------------------------------ run


def _initial_atoms(config: MDConfig) -> Atoms:
    from matsim.md.builder import build_box, read_structure

    if config.system is not None:
        return build_box(config.system)
    return read_structure(config.structure)


def _write_config(config: MDConfig, directory: Path) -> None:
    data = config.model_dump(mode="json")
    (directory / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K drawn from ``rng`` (ASE >= 3.29 renamed the function)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)


class _Run:
    """One invocation of :func:`run_md` (fresh or resumed)."""

    def __init__(self, config: MDConfig, directory: Path, atoms: Atoms, state: _State, calculator: Calculator,
                 progress: bool) -> None:
        self.config, self.directory, self.atoms, self.state = config, directory, atoms, state
        self.names = config.stage_names()
        out = config.output
        self.thermo = ThermoWriter(directory / "thermo.csv")
        self.trajectory = _TrajectoryWriter(directory / f"trajectory.{out.trajectory_format}", out.trajectory_format)
        self.trajectory.frames = state.trajectory_frames
        wd = config.watchdog
        self.watchdog = Watchdog(wd.min_distance, wd.max_force, wd.max_temperature_factor,
                                 directory / "last_good.extxyz", wd.enabled)
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        if state.rng_state:
            self.rng.bit_generator.state = state.rng_state
        self.progress = _Progress(progress)
        self.atoms.calc = calculator
        self.timings = self._load_timings()

    def _load_timings(self) -> list[dict]:
        path = self.directory / "run.json"
        if path.exists():
            try:
                return json.loads(path.read_text()).get("stages", [])
            except (OSError, ValueError):
                return []
        return []

    def _write_run_info(self) -> None:
        calc = self.atoms.calc
        info = {
            "matsim_version": __version__,
            "model": self.config.model,
            "calculator": type(calc).__name__,
            "device": str(getattr(calc, "device", "cpu")),
            "dtype": self.config.dtype if isinstance(calc, MatSimCalculator) else None,
            "model_caveat": model_caveat(calc),
            "n_atoms": len(self.atoms),
            "composition": self.atoms.info.get("composition"),
            "stages": self.timings,
        }
        (self.directory / "run.json").write_text(json.dumps(info, indent=2, default=str))

    def checkpoint(self, dyn: Any) -> None:
        self.state.thermo_bytes = self.thermo.sync()
        self.state.trajectory_bytes = self.trajectory.sync()
        self.state.trajectory_frames = self.trajectory.frames
        self.state.rng_state = self.rng.bit_generator.state
        _write_checkpoint(self.directory, self.atoms, self.state, dyn)

    def close(self) -> None:
        self.progress.close()
        self.thermo.close()
        self.trajectory.close()

    def run(self, dyn_state: dict[str, np.ndarray]) -> None:
        """Run the stages from the current state. A stage's last checkpoint keeps ``stage_step == steps`` with the
        integrator state, so a finished stage can be extended (more ``steps``) and resumed exactly."""
        while self.state.stage < len(self.config.stages):
            stage = self.config.stages[self.state.stage]
            name = self.names[self.state.stage]
            started, first_step, first_time = time.perf_counter(), self.state.step, self.state.time_fs
            minimising = stage.kind == "minimise" and self.state.stage_step < stage.steps
            if minimising:
                self._minimise(stage, name)
            elif stage.kind != "minimise":
                self._md(stage, name, dyn_state)
            dyn_state = {}
            wall = time.perf_counter() - started
            steps = self.state.step - first_step  # steps taken now (a minimisation may converge early)
            if steps > 0 or minimising:
                self.timings.append({"stage": name, "kind": stage.kind, "steps": steps, "wall_s": round(wall, 3),
                                     "steps_per_s": steps / wall if wall > 0 and steps else None,
                                     "ns_per_day": _ns_per_day(self.state.time_fs - first_time, wall)
                                     if stage.kind != "minimise" else None})
                self._write_run_info()
            self.state.stage += 1
            self.state.stage_step = 0
        ase.io.write(self.directory / "final.extxyz", _frame(self.atoms, self.state.step, self.state.time_fs,
                                                             self.names[-1]), format="extxyz")

    # -- stages

    def _row(self, name: str, dyn: Any) -> None:
        self.thermo.write(thermo_row(self.atoms, self.state.step, self.state.time_fs, name, dyn))

    def _minimise(self, stage: StageConfig, name: str) -> None:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        atoms = self.atoms
        target = FrechetCellFilter(atoms, scalar_pressure=stage.pressure_bar * units.bar) if stage.cell_filter \
            else atoms
        optimizer = FIRE(target, maxstep=stage.maxstep, logfile=None)
        self.progress.stage(name, stage.steps, 0)
        every = self.config.output.thermo_every
        fmax = float("nan")
        for _ in optimizer.irun(fmax=stage.fmax, steps=stage.steps):
            n = optimizer.nsteps
            forces = atoms.get_forces()
            self.watchdog.check_finite(atoms, forces, self.state.step, name)
            fmax = float(np.sqrt((forces**2).sum(axis=1)).max())
            if n > 0:
                self.state.step += 1
            if n % every == 0:
                self._row(name, None)
            self.progress.update(n, f"fmax {fmax:.3f} eV/Å")
        self.progress.update(stage.steps, f"fmax {fmax:.3f} eV/Å ({optimizer.nsteps} steps)")
        self.watchdog.check(atoms, atoms.get_forces(), self.state.step, name, None, check_forces=False)
        ase.io.write(self.directory / "minimised.extxyz",
                     _frame(atoms, self.state.step, self.state.time_fs, name), format="extxyz")
        self.state.stage_step = stage.steps
        self.checkpoint(None)

    def _md(self, stage: StageConfig, name: str, dyn_state: dict[str, np.ndarray]) -> None:
        from ase.md.velocitydistribution import Stationary

        atoms, state, out = self.atoms, self.state, self.config.output
        if state.stage_step == 0 and not np.any(atoms.get_momenta()):
            _thermalize(atoms, float(stage.temperature_K), self.rng)
            Stationary(atoms)
        dyn = make_dynamics(stage, atoms, self.rng)
        if state.stage_step > 0:
            _restore_dynamics_state(dyn, dyn_state)
        dyn.nsteps = state.stage_step
        check_every = self.config.watchdog.check_every
        target = float(stage.temperature_K)
        if state.stage_step == 0:
            self.watchdog.check(atoms, atoms.get_forces(), state.step, name, target)
            self.checkpoint(dyn)
        elif self.watchdog.last_good is None:
            self.watchdog.remember(atoms, state.step, name)
        self.progress.stage(name, stage.steps, state.stage_step)
        started, done_before = time.perf_counter(), state.stage_step
        # ASE's NPTBerendsen rescales the cell and then asks for forces again (two evaluations per step); give it
        # the forces of the current positions instead, before the O(dt/taup) rescaling, as GROMACS does. They are
        # recomputed identically after a resume, so the run stays exactly resumable.
        reuse_forces = type(dyn).__name__ == "NPTBerendsen"
        for n in range(state.stage_step + 1, stage.steps + 1):
            if reuse_forces:
                dyn.step(forces=atoms.get_forces(md=True))
            else:
                dyn.step()
            dyn.nsteps += 1
            state.stage_step, state.step = n, state.step + 1
            state.time_fs += stage.timestep_fs
            forces = atoms.get_forces()
            self.watchdog.check_finite(atoms, forces, state.step, name)
            if n % check_every == 0 or n == stage.steps:
                self.watchdog.check(atoms, forces, state.step, name, target)
            if n % out.thermo_every == 0:
                self._row(name, dyn)
            if n % out.trajectory_every == 0:
                self.trajectory.write(_frame(atoms, state.step, state.time_fs, name))
            if n % out.checkpoint_every == 0 or n == stage.steps:
                self.checkpoint(dyn)
            if self.progress.enabled and (n % 5 == 0 or n == stage.steps):
                wall = time.perf_counter() - started
                rate = _ns_per_day((n - done_before) * stage.timestep_fs, wall)
                self.progress.update(n, f"{rate:.3g} ns/day  T {atoms.get_temperature():.0f} K")


def run_md(config: MDConfig, output_dir: str | Path, resume: bool = False, calculator: Calculator | None = None,
           progress: bool | None = None, analyze: bool | None = None,
           log: Callable[[str], None] | None = None) -> MDResult:
    """Run ``config`` into ``output_dir`` (module docstring lists the files); continue from its checkpoint when
    ``resume``.

    Args:
        calculator: an ASE calculator to use instead of ``config.model`` (custom potentials, tests).
        progress: show the progress bar (default ``config.output.progress``).
        analyze: run the analysis at the end (default ``config.analysis.enabled``).
        log: receives warnings for the user (the model's caveat, see :func:`model_caveat`) once the model is loaded.

    Raises:
        ConfigError: a fresh run into a directory that already holds one, or a resume with a changed system/model.
        CheckpointError: ``resume`` without a checkpoint. MDBlowUp: the watchdog stopped the run.
        InputFileError / StructureError: from building or reading the box.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # cheap checks first, then the model, then the (slow) box: a mistake costs seconds and leaves no half-run
    if resume:
        atoms, state, dyn_state = _read_checkpoint(directory)
        if state.source_hash != _source_hash(config):
            raise ConfigError(f"{directory} was run with another system, structure or model than this config; "
                              "resume with the same ones, or start a new --output directory")
        if state.stage > len(config.stages) or (state.stage < len(config.stages)
                                                and state.stage_step > config.stages[state.stage].steps):
            raise ConfigError(f"the checkpoint in {directory} is past the end of this config's stages")
    else:
        existing = [n for n in (CHECKPOINT_NAME, _PREVIOUS_CHECKPOINT, "thermo.csv") if (directory / n).exists()]
        if existing:
            raise ConfigError(f"{directory} already holds a run ({', '.join(existing)}): use --resume to continue "
                              "it, or choose another --output directory")
        if config.structure is not None and not Path(config.structure).is_file():
            from matsim.core.errors import InputFileError

            raise InputFileError(f"structure file not found: {config.structure}")
    calc = calculator if calculator is not None else make_calculator(config)
    caveat = model_caveat(calc)
    if caveat and log is not None:
        log(f"warning: model {config.model}: {caveat}")
    if resume:
        _truncate(directory / "thermo.csv", state.thermo_bytes)
        if config.output.trajectory_format == "extxyz":
            _truncate(directory / "trajectory.extxyz", state.trajectory_bytes)
        else:
            _truncate_traj_frames(directory / "trajectory.traj", state.trajectory_frames)
    else:
        atoms = _initial_atoms(config)
        ase.io.write(directory / "initial.extxyz", atoms, format="extxyz")
        state, dyn_state = _State(source_hash=_source_hash(config)), {}
    _write_config(config, directory)
    show = config.output.progress if progress is None else progress
    run = _Run(config, directory, atoms, state, calc, show)
    try:
        if not resume:
            run.checkpoint(None)
        run.run(dyn_state)
    finally:
        run.close()
    run._write_run_info()
    summary = None
    if config.analysis.enabled if analyze is None else analyze:
        try:
            summary = analyze_output(directory, config)
        except ConfigError as exc:
            summary = {"error": str(exc)}
            (directory / "analysis.json").write_text(json.dumps(summary, indent=2))
    return MDResult(directory, state.step, state.time_fs, summary, run.timings)


# -------------------------------------------------------------------------------------------------- analysis


def _analysis_stage(config: MDConfig) -> tuple[int, str]:
    names = config.stage_names()
    chosen = config.analysis.stage
    if chosen is None:
        md = [k for k, s in enumerate(config.stages) if s.kind != "minimise"]
        if not md:
            raise ConfigError("analysis: the config has no nvt or npt stage to analyse")
        return md[-1], names[md[-1]]
    if isinstance(chosen, int):
        if not 0 <= chosen < len(names):
            raise ConfigError(f"analysis.stage: index {chosen} is out of range (0..{len(names) - 1})")
        return chosen, names[chosen]
    if chosen not in names:
        raise ConfigError(f"analysis.stage: no stage named {chosen!r} (stages: {', '.join(names)})")
    return names.index(chosen), chosen


def _read_stage_frames(path: Path, stage: str) -> list[Atoms]:
    from matsim.core.errors import InputFileError

    if not path.is_file():
        raise InputFileError(f"trajectory file not found: {path}")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise InputFileError(f"cannot read trajectory {path}: {exc}") from exc
    return [f for f in frames if f.info.get("stage") == stage]


def analyze_output(output_dir: str | Path, config: MDConfig | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """Analyse the production stage of a run directory; writes ``analysis.json`` and ``plots/*.png``.

    ``config`` defaults to the directory's ``config.yaml`` (with ``key.path=value`` ``overrides``, e.g.
    ``analysis.skip_fs=1000``). Returns the JSON summary.
    """
    from matsim.md.analysis import AnalysisConfig, analyze_trajectory
    from matsim.md.plots import plot_analysis

    directory = Path(output_dir)
    if config is None:
        path = directory / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{directory} holds no config.yaml: is it an 'md run' output directory?")
        config = load_md_config(path, list(overrides))
    section = config.analysis
    index, name = _analysis_stage(config)
    stage = config.stages[index]
    if stage.kind == "minimise":
        raise ConfigError(f"analysis.stage: {name!r} is a minimise stage; choose an nvt or npt stage")
    trajectory = directory / f"trajectory.{config.output.trajectory_format}"
    frames = _read_stage_frames(trajectory, name)
    include = set(section.include)
    if "viscosity" not in include:
        for frame in frames:
            if frame.calc is not None:
                frame.calc.results.pop("stress", None)
    options = section.model_dump(exclude={"enabled", "stage", "include"})
    analysis_config = AnalysisConfig(frame_interval_fs=config.output.trajectory_every * stage.timestep_fs,
                                     **options)
    if len(frames) < 2:
        raise ConfigError(f"analysis: stage {name!r} has {len(frames)} frames in {trajectory}; it needs more "
                          "(more steps, or a smaller output.trajectory_every)")
    result = analyze_trajectory(frames, analysis_config)
    if "rdf" not in include and "coordination" not in include:
        result.rdfs = {}
    if "msd" not in include:
        result.diffusion = {}
    summary = _select(result.to_dict(), include)
    summary = {"stage": name, "frames_from": str(trajectory.name), **summary}
    topology = run_topology(directory, frames, analysis_config.frame_interval_fs)
    if topology is not None:
        summary["topology"] = topology.to_dict()
        if topology.warning():
            summary["warnings"] = [topology.warning()]
    (directory / "analysis.json").write_text(json.dumps(summary, indent=2))
    plots = directory / "plots"
    plots.mkdir(exist_ok=True)
    plot_analysis(result, plots)
    return summary


def run_topology(directory: Path, frames: list[Atoms], frame_interval_fs: float) -> TopologyReport | None:
    """Bonds of the run's ``initial.extxyz`` (before any dynamics) checked in ``frames``; None without molecule ids."""
    from matsim.md.analysis.topology import topology_changes
    from matsim.md.analysis.trajectory import molecule_labels

    path = directory / "initial.extxyz"
    reference = ase.io.read(path) if path.is_file() else frames[0]
    if "mol_id" not in reference.arrays:
        return None
    return topology_changes(frames, reference, molecule_labels(reference), frame_interval_fs)


_SECTIONS = {
    "density": ("thermo",),
    "rdf": ("rdf",),
    "coordination": ("coordination_number", "solvation_shells"),
    "msd": ("diffusion_cm2_s",),
    "conductivity": ("conductivity_mS_cm", "conductivity_fit_window_fs"),
    "viscosity": ("viscosity_mPa_s",),
}


def _select(summary: dict, include: set[str]) -> dict:
    dropped = {key for name in ANALYSES if name not in include for key in _SECTIONS[name]}
    return {k: v for k, v in summary.items() if k not in dropped}
