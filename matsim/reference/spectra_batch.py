"""Compute the IR spectra of a list of molecules into a ``SPECTRA.h5`` file, in parallel and resumably.

* Input: a ``.smi`` or ``.csv`` molecule list (:func:`matsim.datasets.spectra.read_molecule_list`); every SMILES is
  parsed before any work starts, so a typo in line 90 000 stops the run at once, not after hours.
* Output: :class:`matsim.datasets.spectra.SpectraWriter` (format in :mod:`matsim.datasets.spectra`), written by this
  process only, one whole molecule at a time as results arrive (completion order, not input order); with
  ``store_ir=False`` a sticks-only file. The stored spectrum is broadened from the sticks as stored (float32), so
  the reader rebuilds exactly it from a sticks-only file.
* Resuming: molecules whose id is already in the file are skipped (their SMILES must match the input's, else the
  file belongs to another input); molecules in the file's ``failed`` list are skipped too unless ``retry_failed``.
  The file's recipe (method, broadening, optimiser threshold, ...) must match the settings.
* Failures of one molecule (rdkit cannot embed it, the optimiser does not converge, SCF failure, an impossible
  charge/multiplicity) go to ``failed`` with the reason; any other error stops the run, keeping what was written.
* Parallelism as in :mod:`matsim.reference.labeller`: ``n_jobs`` spawned processes with one OpenMP/BLAS thread each
  (GFN2 on a QM9 molecule is too small to use threads well); ``n_jobs=1`` computes in this process. At most
  ``4 * n_jobs`` molecules are in flight, so a 130k-molecule list does not queue 130k tasks.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from matsim.core.errors import ConfigError, InputFileError, MatsimError
from matsim.datasets.spectra import MoleculeEntry, SpectraWriter, SpectrumRecord, read_molecule_list
from matsim.reference.labeller import _thread_limits, available_cores
from matsim.reference.spectra import IR_GRID, SpectrumSettings, broaden, ir_from_smiles, normalise

__all__ = ["SpectraSummary", "compute_spectra", "file_attributes"]

#: Molecules queued per worker process.
_IN_FLIGHT_PER_JOB = 4
#: Line shape of the stored spectra (the file's ``line_shape``).
_LINE_SHAPE = "lorentzian"


@dataclass
class SpectraSummary:
    """What one :func:`compute_spectra` run did.

    Attributes:
        output: the ``SPECTRA.h5`` file.
        total: molecules in the input (after ``limit``).
        done: spectra computed and written by this run.
        skipped: molecules already in the file (or in its failed list), not recomputed.
        failed: id -> reason, for molecules of this run without a spectrum.
        wall_seconds: wall time of the computing part of the run, s.
        molecule_seconds: compute time of each molecule of this run (one worker, one core), s.
    """

    output: Path
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    molecule_seconds: list[float] = field(default_factory=list)


class _Outcome(NamedTuple):
    entry: MoleculeEntry
    record: SpectrumRecord | None
    error: str | None
    seconds: float


def file_attributes(settings: SpectrumSettings) -> dict[str, object]:
    """The ``SPECTRA.h5`` attributes that describe how ``settings`` computes spectra (plus software versions)."""
    return {
        "method": settings.method,
        "level_of_theory": settings.level_of_theory,
        "line_shape": _LINE_SHAPE,
        "fwhm_cm-1": settings.fwhm,
        "normalisation": "max",
        "optimiser": settings.optimiser,
        "fmax_eV/A": settings.fmax,
        "fd_step_A": settings.fd_step,
        "saddle_restarts": settings.saddle_restarts,
        "conformer": f"rdkit ETKDGv3 seed {settings.seed}, lowest-MMFF94 of {settings.n_conformers}",
        "software": _versions(("matsim", "rdkit", "ase", "pyscf" if settings.method == "dft" else "tblite")),
    }


def _versions(packages: tuple[str, ...]) -> str:
    """``"name version, ..."`` of the installed ``packages``."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def compute_spectra(
    input_path: str | Path,
    output_path: str | Path,
    settings: SpectrumSettings = SpectrumSettings(),
    n_jobs: int | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: Callable[[SpectraSummary], None] | None = None,
    store_ir: bool = True,
) -> SpectraSummary:
    """Compute the spectra of the molecules of ``input_path`` into ``output_path`` (see the module docstring);
    ``store_ir=False`` writes a sticks-only file (an existing output must be of the same kind).

    ``progress`` is called with the running summary after each molecule. With ``n_jobs > 1`` a script calling this
    must guard its entry point with ``if __name__ == "__main__":`` (spawned workers re-import it).

    Raises :class:`InputFileError` for a bad input list or an output from another input; :class:`ConfigError` for
    bad settings, ``n_jobs < 1``, or an output computed with another recipe or of the other kind.
    """
    n_jobs = available_cores() if n_jobs is None else n_jobs
    if n_jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {n_jobs}")
    entries = read_molecule_list(input_path, limit)
    summary = SpectraSummary(output=Path(output_path), total=len(entries))
    with SpectraWriter(output_path, IR_GRID, file_attributes(settings), store_ir=store_ir) as writer:
        pending = _pending(entries, writer, retry_failed)
        summary.skipped = len(entries) - len(pending)
        if progress is not None:
            progress(summary)
        start = time.perf_counter()
        for outcome in _outcomes(pending, settings, min(n_jobs, max(1, len(pending)))):
            if outcome.record is None:
                writer.add_failure(outcome.entry.id, outcome.entry.smiles, str(outcome.error))
                summary.failed[outcome.entry.id] = str(outcome.error)
            else:
                writer.append(outcome.record)
                summary.done += 1
            summary.molecule_seconds.append(outcome.seconds)
            summary.wall_seconds = time.perf_counter() - start
            if progress is not None:
                progress(summary)
    return summary


def _pending(entries: list[MoleculeEntry], writer: SpectraWriter, retry_failed: bool) -> list[MoleculeEntry]:
    """The entries still to compute, after checking that the file's molecules are this input's."""
    pending = []
    for entry in entries:
        known = writer.done.get(entry.id, writer.failed.get(entry.id, (None,))[0])
        if known is not None and known != entry.smiles:
            raise InputFileError(
                f"{writer.path} holds id {entry.id!r} as {known!r}, but {entry.source} has {entry.smiles!r}: "
                "the output belongs to another input; choose another output file"
            )
        if entry.id in writer.done or (entry.id in writer.failed and not retry_failed):
            continue
        pending.append(entry)
    return pending


def _outcomes(pending: list[MoleculeEntry], settings: SpectrumSettings, n_jobs: int) -> Iterator[_Outcome]:
    """Compute ``pending`` molecules, yielding each outcome as soon as it is ready."""
    if n_jobs == 1:
        for entry in pending:
            yield _compute_one(entry, settings)
        return
    queue = iter(pending)
    # Workers start on demand (at a submit), so the thread limits must hold for the pool's whole life.
    with _thread_limits(1):
        pool = ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            running: set[Future] = set()
            while True:
                for entry in queue:
                    running.add(pool.submit(_compute_one, entry, settings))
                    if len(running) >= _IN_FLIGHT_PER_JOB * n_jobs:
                        break
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BrokenProcessPool as exc:
            raise MatsimError(
                "a spectra worker died (out of memory? try fewer --jobs); the spectra written so far are kept and "
                "a rerun resumes from them"
            ) from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _compute_one(entry: MoleculeEntry, settings: SpectrumSettings) -> _Outcome:
    """One molecule's spectrum record, or the reason it has none."""
    start = time.perf_counter()
    try:
        result = ir_from_smiles(entry.smiles, settings)
    except MatsimError as exc:  # SpectrumFailed, SCFNotConverged, StructureError (impossible charge/multiplicity)
        return _Outcome(entry, None, str(exc), time.perf_counter() - start)
    # broadened from the sticks as the file stores them, so a sticks-only file rebuilds this very spectrum
    frequencies = result.modes.frequencies.astype(np.float32)
    intensities = result.modes.intensities.astype(np.float32)
    ir, peak = normalise(broaden(frequencies, intensities, IR_GRID, settings.fwhm, _LINE_SHAPE))
    record = SpectrumRecord(
        smiles=entry.smiles,
        id=entry.id,
        method=settings.method,
        ir=ir.astype(np.float32),
        ir_max=peak,
        energy=result.energy,
        atomic_numbers=result.atoms.numbers,
        positions=result.atoms.positions,
        frequencies=frequencies,
        intensities=intensities,
    )
    return _Outcome(entry, record, None, time.perf_counter() - start)
