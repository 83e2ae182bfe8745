"""Convex-hull stability of crystals against an energy oracle, and the S.U.N. fraction.

An oracle is any ASE calculator (CHGNet's pretrained one, a matsim potential, DFT): this module never imports a
model. Candidates and reference phases are relaxed by the same oracle (FIRE on ASE's ``FrechetCellFilter``, with a
step limit and a wall-clock limit); failures are reported in the result, never raised. Reference phases of each
chemical system are the elements (trial prototypes, see :func:`elemental_prototypes`, plus any elemental phase in
the known structures), the known compounds (e.g. the training set) and optional user entries. A candidate's energy
above hull is measured against the hull of the references alone, so a candidate below that hull gets a negative
value (pymatgen ``PhaseDiagram.get_e_above_hull(..., allow_negative=True)``).

Units: energies in eV, energies above hull in eV/atom, forces in eV/Å, times in s.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matsim.core.errors import ConfigError

# MatterGen (Zeni et al., Nature 2025): "stable" is E_hull <= 0.0 eV/atom, "metastable" <= 0.1 eV/atom.
STABILITY_THRESHOLDS = (0.0, 0.1)
# CHGNet's StructOptimizer.relax defaults: fmax 0.1 eV/Å; we cap steps lower (500 there) for screening throughput.
DEFAULT_FMAX = 0.1
DEFAULT_MAX_STEPS = 200
# Wall-clock limit of one relaxation, in s (a pathological candidate must not stall a whole scoring run).
DEFAULT_TIMEOUT_S = 120.0
# Elemental prototypes start from guessed lattice constants, so they are relaxed at least this long.
PROTOTYPE_MIN_STEPS = 50
# Edge of the cubic box holding a diatomic molecule, in Å: beyond CHGNet's 6 Å cutoff, so images do not interact
# and the stress vanishes (the cell filter leaves the box alone).
MOLECULE_BOX = 12.0
# Elements whose standard state is a diatomic molecule; each gets a dimer-in-a-box trial reference.
DIATOMIC_ELEMENTS = frozenset({"H", "N", "O", "F", "Cl", "Br", "I"})
# Ideal c/a of hcp.
HCP_C_OVER_A = math.sqrt(8.0 / 3.0)


@runtime_checkable
class EnergyOracle(Protocol):
    """The part of the ASE Calculator contract this module uses: energy (eV), forces (eV/Å), stress (eV/Å³)."""

    def get_potential_energy(self, atoms: Atoms | None = None, force_consistent: bool = False) -> float: ...

    def get_forces(self, atoms: Atoms | None = None) -> np.ndarray: ...

    def get_stress(self, atoms: Atoms | None = None) -> np.ndarray: ...


def chgnet_calculator(model_name: str = "0.3.0", device: str = "cpu") -> EnergyOracle:
    """CHGNet's pretrained ASE calculator, loaded offline from the weights shipped inside the chgnet wheel.

    CHGNet's messages go to stderr so that machine-readable stdout stays clean.
    """
    try:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:
        raise ConfigError("the CHGNet oracle needs the chgnet package: pip install chgnet") from exc
    with contextlib.redirect_stdout(sys.stderr):
        model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        return CHGNetCalculator(model=model, use_device=device)


# --- relaxation --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relaxed:
    """Outcome of one relaxation. ``energy`` is the total energy (eV) of ``structure``; both ``None`` on failure."""

    structure: Structure | None
    energy: float | None
    n_steps: int
    converged: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the oracle produced a finite energy."""
        return self.energy is not None


def relax(
    structure: Structure,
    oracle: EnergyOracle,
    max_steps: int = DEFAULT_MAX_STEPS,
    fmax: float = DEFAULT_FMAX,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    relax_cell: bool = True,
) -> Relaxed:
    """Relax positions (and the cell, through ``FrechetCellFilter``) with FIRE until max force < ``fmax`` (eV/Å).

    ``max_steps=0`` gives a static energy. Stops at ``max_steps`` or after ``timeout_s`` seconds (then
    ``converged`` is False but the last energy is kept). Any oracle failure or a non-finite energy is returned as
    ``error``, never raised.
    """
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = oracle
    start = time.monotonic()
    converged, n_steps = False, 0
    try:
        if max_steps > 0:
            optimizer = FIRE(FrechetCellFilter(atoms) if relax_cell else atoms, logfile=None)
            for converged in optimizer.irun(fmax=fmax, steps=max_steps):
                n_steps = optimizer.nsteps
                if time.monotonic() - start > timeout_s:
                    break
        energy = float(atoms.get_potential_energy())
        final = AseAtomsAdaptor.get_structure(atoms)
    except Exception as exc:  # an oracle may fail in many ways on a bad candidate: report, do not raise
        return Relaxed(None, None, n_steps, False, f"{type(exc).__name__}: {exc}")
    if not math.isfinite(energy):
        return Relaxed(None, None, n_steps, False, "non-finite energy")
    return Relaxed(final, energy, n_steps, bool(converged))


class Relaxer:
    """Relaxes structures one after another with one oracle in this process (see :func:`relax`)."""

    def __init__(self, oracle: EnergyOracle) -> None:
        self.oracle = oracle

    def relax_all(self, structures: Sequence[Structure], max_steps: Sequence[int], fmax: float = DEFAULT_FMAX,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Relaxed]:
        """The relaxation of each structure, in order (``max_steps``: one step limit per structure)."""
        for structure, steps in zip(structures, max_steps, strict=True):
            yield relax(structure, self.oracle, steps, fmax, timeout_s)


class ParallelRelaxer(Relaxer):
    """Relaxes structures in ``workers`` spawned processes, each with its own oracle made by ``oracle_factory``
    (a picklable callable, e.g. ``functools.partial(chgnet_calculator, device="cpu")``) and ``threads`` torch
    threads. Results come back in input order. Use it as a context manager, so the workers are shut down.

    One thread per worker and one worker per core is the fast layout for small cells: CHGNet on a 5-atom cell
    takes ~35 ms per FIRE step on one core, and two threads per worker on the same cores made it ~3x slower.
    """

    def __init__(self, oracle_factory: Callable[[], EnergyOracle], workers: int, threads: int = 1) -> None:
        if workers < 1 or threads < 1:
            raise ConfigError(f"workers and threads must be ≥ 1, got {workers} and {threads}")
        self.workers = workers
        context = multiprocessing.get_context("spawn")  # CUDA and forked processes do not mix
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                         initargs=(oracle_factory, threads))

    def __enter__(self) -> "ParallelRelaxer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)

    def relax_all(self, structures: Sequence[Structure], max_steps: Sequence[int], fmax: float = DEFAULT_FMAX,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Relaxed]:
        if len(structures) != len(max_steps):
            raise ValueError("one step limit per structure is needed")
        yield from self._pool.map(_relax_in_worker, structures, max_steps, itertools.repeat(fmax),
                                  itertools.repeat(timeout_s))


_WORKER_ORACLE: EnergyOracle | None = None


def _start_worker(oracle_factory: Callable[[], EnergyOracle], threads: int) -> None:
    import torch

    global _WORKER_ORACLE
    torch.set_num_threads(threads)
    _WORKER_ORACLE = oracle_factory()


def _relax_in_worker(structure: Structure, max_steps: int, fmax: float, timeout_s: float) -> Relaxed:
    return relax(structure, _WORKER_ORACLE, max_steps, fmax, timeout_s)


class CachedRelaxer(Relaxer):
    """Wraps a :class:`Relaxer` with a JSON-lines file of finished relaxations, so a long job that is stopped
    resumes where it was: a structure relaxed before (same structure, step limit, ``fmax`` and ``timeout_s``) is
    read back instead of relaxed again. Each result is appended as it arrives; ``progress`` (a callable taking
    (done, total)) is called after every ``report_every`` results.
    """

    def __init__(self, inner: Relaxer, path: str | os.PathLike, progress: Callable[[int, int], None] | None = None,
                 report_every: int = 50) -> None:
        self.inner, self.path = inner, Path(path)
        self.progress, self.report_every = progress, max(1, report_every)
        self._done: dict[str, Relaxed] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):  # a line cut by a kill is skipped
                    record = json.loads(line)
                    self._done[record["key"]] = _relaxed_from_record(record)

    def __len__(self) -> int:
        return len(self._done)

    def relax_all(self, structures: Sequence[Structure], max_steps: Sequence[int], fmax: float = DEFAULT_FMAX,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Relaxed]:
        keys = [_relaxation_key(s, n, fmax, timeout_s) for s, n in zip(structures, max_steps, strict=True)]
        first: dict[str, int] = {}  # each structure not done yet, once
        for i, key in enumerate(keys):
            if key not in self._done:
                first.setdefault(key, i)
        todo = list(first.values())
        fresh = self.inner.relax_all([structures[i] for i in todo], [max_steps[i] for i in todo], fmax, timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as log:
            for count, (i, result) in enumerate(zip(todo, fresh, strict=True), start=1):
                self._done[keys[i]] = result
                log.write(json.dumps(_relaxed_record(keys[i], result), default=_plain_number) + "\n")
                log.flush()
                if self.progress is not None and (count % self.report_every == 0 or count == len(todo)):
                    self.progress(count, len(todo))
        yield from (self._done[key] for key in keys)


def _relaxation_key(structure: Structure, max_steps: int, fmax: float, timeout_s: float) -> str:
    text = json.dumps([structure.as_dict(), max_steps, fmax, timeout_s], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _relaxed_record(key: str, result: Relaxed) -> dict[str, Any]:
    return {"key": key, "structure": result.structure.as_dict() if result.structure is not None else None,
            "energy": result.energy, "n_steps": result.n_steps, "converged": result.converged, "error": result.error}


def _plain_number(value: Any) -> Any:
    """JSON form of numpy scalars and arrays (oracles return e.g. float32 energies and site properties)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _relaxed_from_record(record: dict[str, Any]) -> Relaxed:
    structure = Structure.from_dict(record["structure"]) if record["structure"] is not None else None
    return Relaxed(structure, record["energy"], record["n_steps"], record["converged"], record["error"])


def as_relaxer(oracle: EnergyOracle | Relaxer) -> Relaxer:
    """``oracle`` itself when it is a :class:`Relaxer`, else a serial relaxer around it."""
    return oracle if isinstance(oracle, Relaxer) else Relaxer(oracle)


# --- reference phases --------------------------------------------------------------------------------------------


def elemental_prototypes(symbol: str) -> list[Structure]:
    """Trial structures of an element, to be relaxed by the oracle; the lowest energy per atom is its reference.

    Diatomic gases (H, N, O, halogens): a dimer in a box. Elements for which ASE tabulates the experimental ground
    state (diamond C/Si, hcp Ti, rhombohedral Bi, ...): that structure. Others (B, P, S, Mn, Ga, Se, Te, ...): fcc,
    bcc and hcp cells with a nearest-neighbour distance of twice ASE's covalent radius. The true ground states of
    that last group are none of these: pass them as known structures when they matter. (One trial per tabulated
    element keeps the cost down: elemental relaxations dominate the time of small scoring runs.)
    """
    if symbol not in atomic_numbers:
        raise ConfigError(f"unknown element '{symbol}'")
    d = 2.0 * covalent_radii[atomic_numbers[symbol]]
    if symbol in DIATOMIC_ELEMENTS:
        trials = [Atoms(symbol * 2, positions=[[0, 0, 0], [0, 0, d]], cell=[MOLECULE_BOX] * 3, pbc=True)]
    else:
        try:
            trials = [bulk(symbol)]
        except (ValueError, KeyError, RuntimeError):  # ASE tabulates no (supported) ground state
            trials = [
                bulk(symbol, "fcc", a=d * math.sqrt(2.0)),
                bulk(symbol, "bcc", a=2.0 * d / math.sqrt(3.0)),
                bulk(symbol, "hcp", a=d, c=d * HCP_C_OVER_A),
            ]
    return [AseAtomsAdaptor.get_structure(atoms) for atoms in trials]


def chemical_system(composition: Composition) -> frozenset[str]:
    """Element symbols of a composition."""
    return frozenset(element.symbol for element in composition.elements)


def _within(systems: Sequence[frozenset[str]], elements: frozenset[str]) -> bool:
    return any(elements <= system for system in systems)


@dataclass(frozen=True)
class ReferenceSet:
    """Reference phases as pymatgen entries (total energies in eV) and the references the oracle failed on."""

    entries: tuple[PDEntry, ...]
    failures: tuple[str, ...]


def reference_entries(
    systems: Iterable[frozenset[str]],
    oracle: EnergyOracle | Relaxer,
    known: Sequence[Structure | None] = (),
    user_entries: Sequence[tuple[Composition | str, float]] = (),
    max_steps: int = DEFAULT_MAX_STEPS,
    fmax: float = DEFAULT_FMAX,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ReferenceSet:
    """Reference entries spanning the given chemical systems, with energies from ``oracle``.

    Args:
        systems: chemical systems (sets of element symbols) to cover, e.g. one per candidate.
        oracle: the energy oracle (the same one that scores the candidates), or a :class:`Relaxer` around it.
        known: known structures (training set); those inside one of ``systems`` are relaxed and included.
        user_entries: (composition, total energy in eV on the oracle's scale) pairs added as they are.
        max_steps, fmax, timeout_s: relaxation settings (see :func:`relax`); elemental prototypes are always
            relaxed, with at least ``PROTOTYPE_MIN_STEPS`` steps, because their lattice constants are guesses.
    """
    systems = list(set(systems))
    elements = sorted(set().union(*systems)) if systems else []
    jobs: list[tuple[Structure, int, str]] = []  # (structure, step limit, entry name)
    for symbol in elements:
        for i, prototype in enumerate(elemental_prototypes(symbol)):
            jobs.append((prototype, max(max_steps, PROTOTYPE_MIN_STEPS), f"{symbol}-prototype-{i}"))
    for i, structure in enumerate(known):
        if structure is not None and _within(systems, chemical_system(structure.composition)):
            jobs.append((structure, max_steps, f"known-{i}-{structure.composition.reduced_formula}"))
    entries: list[PDEntry] = []
    failures: list[str] = []
    results = as_relaxer(oracle).relax_all([j[0] for j in jobs], [j[1] for j in jobs], fmax, timeout_s)
    for (_, _, name), result in zip(jobs, results, strict=True):
        if result.ok:
            entries.append(PDEntry(result.structure.composition, result.energy, name=name))
        else:
            failures.append(f"{name}: {result.error}")
    for composition, energy in user_entries:
        entry = PDEntry(Composition(composition), float(energy), name=f"user-{Composition(composition).formula}")
        if _within(systems, chemical_system(entry.composition)):
            entries.append(entry)
    return ReferenceSet(entries=tuple(entries), failures=tuple(failures))


# --- energy above hull -------------------------------------------------------------------------------------------


def energy_above_hull(candidates: Sequence[PDEntry | None], references: Sequence[PDEntry]) -> list[float | None]:
    """Energy above hull (eV/atom) of each candidate against the hull of ``references`` alone.

    The candidate is not part of the hull, so one below it gets a negative value. ``None`` for a ``None``
    candidate or when the references lack an element of the candidate's chemical system.
    """
    diagrams: dict[frozenset[str], PhaseDiagram | None] = {}
    out: list[float | None] = []
    for candidate in candidates:
        if candidate is None:
            out.append(None)
            continue
        system = chemical_system(candidate.composition)
        if system not in diagrams:
            members = [r for r in references if chemical_system(r.composition) <= system]
            try:
                diagrams[system] = PhaseDiagram(members, elements=[Element(e) for e in sorted(system)])
            except ValueError:  # no reference for some element of this system
                diagrams[system] = None
        diagram = diagrams[system]
        out.append(None if diagram is None else float(diagram.get_e_above_hull(candidate, allow_negative=True)))
    return out


@dataclass(frozen=True)
class StabilityMetrics:
    """Hull metrics of a sample set; fractions are over all ``n`` samples (failures count as unstable).

    ``stable`` maps a threshold (eV/atom, as a string) to the fraction with E_hull <= threshold; ``sun`` to the
    fraction that is stable at that threshold, unique and novel (S.U.N., MatterGen).
    """

    n: int
    n_evaluated: int
    stable: dict[str, float]
    sun: dict[str, float] | None
    mean_e_above_hull: float | None
    e_above_hull: tuple[float | None, ...]
    failures: tuple[str, ...]
    settings: dict[str, Any]
    versions: dict[str, str]

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """Flat JSON-serialisable dict with keys ``stable_<t>`` and ``sun_<t>``."""
        data: dict[str, Any] = {"n": self.n, "n_hull_evaluated": self.n_evaluated}
        data |= {f"stable_{t}": v for t, v in self.stable.items()}
        data |= {f"sun_{t}": v for t, v in (self.sun or {}).items()}
        data |= {"mean_e_above_hull": self.mean_e_above_hull, "n_hull_failures": len(self.failures)}
        data |= {"hull_settings": self.settings, "hull_versions": self.versions}
        if include_samples:
            data |= {"e_above_hull": list(self.e_above_hull), "hull_failures": list(self.failures)}
        return data


def stability_metrics(
    e_above_hull: Sequence[float | None],
    unique: Sequence[bool] | None = None,
    novel: Sequence[bool] | None = None,
    thresholds: Sequence[float] = STABILITY_THRESHOLDS,
    failures: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
) -> StabilityMetrics:
    """Stable and S.U.N. fractions from per-sample energies above hull (``None`` = not evaluated = unstable)."""
    n = len(e_above_hull)
    if n == 0:
        raise ConfigError("no samples to score")
    if (unique is None) != (novel is None) or (unique is not None and not len(unique) == len(novel) == n):
        raise ConfigError("S.U.N. needs unique and novel flags for every sample")
    evaluated = [e for e in e_above_hull if e is not None]
    stable = {str(t): sum(e is not None and e <= t for e in e_above_hull) / n for t in thresholds}
    sun = None
    if unique is not None:
        flags = list(zip(e_above_hull, unique, novel, strict=True))
        sun = {str(t): sum(e is not None and e <= t and u and v for e, u, v in flags) / n for t in thresholds}
    return StabilityMetrics(
        n=n,
        n_evaluated=len(evaluated),
        stable=stable,
        sun=sun,
        mean_e_above_hull=float(np.mean(evaluated)) if evaluated else None,
        e_above_hull=tuple(e_above_hull),
        failures=tuple(failures),
        settings=dict(settings or {}) | {"thresholds_eV_per_atom": list(thresholds)},
        versions=_versions(),
    )


def per_thousand_candidates(
    e_above_hull: Sequence[float | None],
    n_candidates: int | None = None,
    unique: Sequence[bool] | None = None,
    novel: Sequence[bool] | None = None,
    thresholds: Sequence[float] = STABILITY_THRESHOLDS,
) -> dict[str, float]:
    """Stable (and S.U.N.) structures found per 1,000 candidates: the equal-compute yield of a generator.

    ``e_above_hull`` (eV/atom) lists the scored candidates, ``None`` where a candidate was not evaluated (failed,
    invalid, oracle failure: never stable); ``n_candidates`` is how many were generated (default: as many as
    listed), so that candidates that never reached the hull stay in the denominator. Returns
    ``{"stable_per_1000_<t>": 1000 × #(E_hull <= t) / n_candidates}`` per threshold ``t`` and, with the
    ``unique`` and ``novel`` flags of the listed candidates, ``"sun_per_1000_<t>"`` (stable, unique and novel).
    """
    n = len(e_above_hull) if n_candidates is None else n_candidates
    if n < max(len(e_above_hull), 1):
        raise ConfigError(f"per 1,000 candidates: {n} candidates cannot hold {len(e_above_hull)} scored ones")
    if (unique is None) != (novel is None) or (unique is not None and not len(unique) == len(novel) ==
                                                len(e_above_hull)):
        raise ConfigError("S.U.N. needs unique and novel flags for every scored candidate")
    out = {f"stable_per_1000_{t}": 1000.0 * sum(e is not None and e <= t for e in e_above_hull) / n
           for t in thresholds}
    if unique is not None:
        flags = list(zip(e_above_hull, unique, novel, strict=True))
        out |= {f"sun_per_1000_{t}": 1000.0 * sum(e is not None and e <= t and u and v for e, u, v in flags) / n
                for t in thresholds}
    return out


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("matsim", "pymatgen", "ase", "chgnet", "torch"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def hull_stability(
    samples: Sequence[Structure | None],
    oracle: EnergyOracle | Relaxer,
    known: Sequence[Structure | None] = (),
    user_entries: Sequence[tuple[Composition | str, float]] = (),
    evaluate: Sequence[bool] | None = None,
    unique: Sequence[bool] | None = None,
    novel: Sequence[bool] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    fmax: float = DEFAULT_FMAX,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> StabilityMetrics:
    """Relax samples and references with ``oracle`` and compute energies above hull and stable / S.U.N. fractions.

    Args:
        samples: generated structures (``None`` = failed sample).
        oracle: any ASE calculator, or a :class:`Relaxer` (e.g. a :class:`ParallelRelaxer`) around one.
        known: known structures (training set) used as reference phases of the samples' chemical systems.
        user_entries: extra (composition, total energy in eV) references on the oracle's energy scale.
        evaluate: which samples to relax (e.g. the structurally valid ones); all non-``None`` ones by default.
        unique, novel: per-sample flags from :mod:`matsim.metrics.crystal`, for S.U.N.
        max_steps, fmax, timeout_s: relaxation settings, shared by samples and references.
    """
    evaluate = evaluate if evaluate is not None else [s is not None for s in samples]
    relaxer = as_relaxer(oracle)
    chosen = [i for i, (s, wanted) in enumerate(zip(samples, evaluate, strict=True)) if wanted and s is not None]
    relaxed = dict(zip(chosen, relaxer.relax_all([samples[i] for i in chosen], [max_steps] * len(chosen), fmax,
                                                 timeout_s), strict=True))
    failures = [f"sample-{i}: {r.error}" for i, r in relaxed.items() if not r.ok]
    candidates: list[PDEntry | None] = [None] * len(samples)
    for i, r in relaxed.items():
        if r.ok:
            candidates[i] = PDEntry(r.structure.composition, r.energy, name=f"sample-{i}")
    systems = {chemical_system(c.composition) for c in candidates if c is not None}
    references = reference_entries(systems, relaxer, known, user_entries, max_steps, fmax, timeout_s)
    e_hull = energy_above_hull(candidates, references.entries)
    failures += [f"reference {f}" for f in references.failures]
    failures += [
        f"sample-{i}: no reference for an element of {c.composition.reduced_formula}"
        for i, (c, e) in enumerate(zip(candidates, e_hull, strict=True))
        if c is not None and e is None
    ]
    settings = {"max_steps": max_steps, "fmax_eV_per_A": fmax, "timeout_s": timeout_s,
                "n_reference_entries": len(references.entries)}
    return stability_metrics(e_hull, unique, novel, failures=failures, settings=settings)
