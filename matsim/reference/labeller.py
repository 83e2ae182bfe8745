"""Label the frames of an extxyz file (or ASE database) with a reference method, in parallel, resumably.

Output: an extxyz file whose frames carry the reference ``energy`` (eV), ``forces`` (N, 3) eV/Å, ``charges`` (N,) e
and ``dipole`` (3,) e·Å, plus ``stress`` (6,) eV/Å³ for periodic frames (xTB only), as ASE calculator results, so
``ase.io.read`` gives them back through ``atoms.get_potential_energy()``, ``get_forces()``, ``get_charges()``,
``get_dipole_moment()`` and ``get_stress()`` (ASE's extxyz writer names the per-atom charge column ``charge``).
Each frame's ``info`` also holds

* ``frame_id``: the index of the frame in the input file;
* ``label_method`` (``"gfn2"``, ``"gfn1"``, ``"dft"``) and ``label_level`` (``"GFN2-xTB"``, ``"B3LYP/def2-SVP"``).

The input's ``info`` (``charge``, ``multiplicity``, ...) and per-atom arrays (``formal_charge``, ...) are kept; its
calculator results (energies and forces of another model) are dropped.

Resuming: frames whose ``frame_id`` is already in the output are skipped, so rerunning the same command after a
kill finishes the job. The output must come from the same input and level of theory, else nothing is computed.

Atomicity: each finished frame is serialised in full, then appended with a single ``write`` to a file opened in
append mode, so a killed run leaves whole frames only. Frames are appended as they finish (completion order); at the
end of a run the file is rewritten sorted by ``frame_id`` if it is not already (a temporary file renamed over it).

Failures: a frame whose SCF does not converge is logged, counted in the summary with its reason and left out;
rerunning retries it. Any other error stops the run, keeping the frames written so far.

Parallelism: ``n_workers`` processes (default: the cores available), each with ``cores // n_workers`` OpenMP/BLAS
threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` are set while the workers start, so no
core is oversubscribed). Workers are started with ``spawn``: forking a parent that has already run OpenMP code can
hang the child. With ``n_workers=1`` frames are computed in the calling process.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from matsim.core.errors import ConfigError, InputFileError, MatsimError
from matsim.datasets.atoms import read_frames
from matsim.reference import SCFNotConverged

__all__ = ["METHOD_NAMES", "ReferenceMethod", "LabelSummary", "label_file", "available_cores"]

logger = logging.getLogger(__name__)

#: Reference methods the labeller knows.
METHOD_NAMES: tuple[str, ...] = ("gfn2", "gfn1", "dft")

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ReferenceMethod:
    """A reference method and its options (picklable: every worker builds its calculators from it).

    Args:
        name: ``"gfn2"``, ``"gfn1"`` (tblite) or ``"dft"`` (PySCF).
        xc: exchange-correlation functional (``"dft"`` only).
        basis: orbital basis set (``"dft"`` only).
        max_scf_cycles: SCF iteration limit; ``None`` keeps the calculator's default (250 for xTB, 100 for DFT).
    """

    name: str
    xc: str = "b3lyp"
    basis: str = "def2-SVP"
    max_scf_cycles: int | None = None

    def __post_init__(self) -> None:
        if self.name not in METHOD_NAMES:
            raise ConfigError(f"unknown reference method {self.name!r}; choose one of {', '.join(METHOD_NAMES)}")

    def calculator(self) -> Calculator:
        """A fresh ASE calculator for this method (raises :class:`ConfigError` for bad options)."""
        if self.name == "dft":
            from matsim.reference.dft import PySCFCalculator

            limit = {} if self.max_scf_cycles is None else {"max_cycle": self.max_scf_cycles}
            return PySCFCalculator(xc=self.xc, basis=self.basis, **limit)
        from matsim.reference.xtb import XTBCalculator

        limit = {} if self.max_scf_cycles is None else {"max_iterations": self.max_scf_cycles}
        return XTBCalculator(self.name, **limit)


@dataclass
class LabelSummary:
    """What one :func:`label_file` run did.

    Attributes:
        output: the labelled extxyz file.
        done: frames labelled by this run.
        skipped: frames already in the output, not recomputed.
        failed: ``frame_id`` -> reason, for frames left out because their SCF did not converge.
    """

    output: Path
    done: int = 0
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)


class _Outcome(NamedTuple):
    frame_id: int
    text: str | None  # the labelled frame as extxyz text, None when it failed
    error: str | None


def label_file(
    input_path: str | Path,
    output_path: str | Path,
    method: ReferenceMethod,
    n_workers: int | None = None,
) -> LabelSummary:
    """Label every frame of ``input_path`` (read by :func:`matsim.datasets.read_frames`) with ``method`` into the
    extxyz file ``output_path`` (see the module docstring).

    ``n_workers`` defaults to the available cores (never more than the frames left). With ``n_workers > 1`` the
    workers are spawned processes, so a script that calls this must guard its entry point with
    ``if __name__ == "__main__":`` (the ``matsim`` command does).

    Raises :class:`InputFileError` for a missing or unreadable input, or an output that does not belong to this input;
    :class:`ConfigError` for bad method options, ``n_workers < 1``, or an output labelled at another level of theory.
    """
    n_workers = available_cores() if n_workers is None else n_workers
    if n_workers < 1:
        raise ConfigError(f"n_workers must be at least 1, got {n_workers}")
    level = method.calculator().level_of_theory  # validates the options before any work starts
    frames = read_frames(input_path)
    output = Path(output_path)
    done_ids = _done_frame_ids(output, frames, method.name, level)
    pending = [(i, atoms) for i, atoms in enumerate(frames) if i not in done_ids]
    summary = LabelSummary(output=output, skipped=len(frames) - len(pending))
    n_workers = min(n_workers, max(1, len(pending)))
    threads = max(1, available_cores() // n_workers)
    for outcome in _outcomes(pending, method, n_workers, threads):
        if outcome.text is None:
            logger.warning("frame %d left out: %s", outcome.frame_id, outcome.error)
            summary.failed[outcome.frame_id] = str(outcome.error)
        else:
            _append(output, outcome.text)
            summary.done += 1
    if output.exists():
        _sort_by_frame_id(output)
    return summary


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _done_frame_ids(output: Path, frames: list[Atoms], method_name: str, level: str) -> set[int]:
    """``frame_id`` of the frames already labelled in ``output``, after checking they belong to this job."""
    if not output.exists() or output.stat().st_size == 0:
        return set()
    try:
        labelled = read(output, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputFileError(f"{output}: cannot read the existing output to resume from it: {exc}") from exc
    done = set()
    for atoms in labelled:
        frame_id = atoms.info.get("frame_id")
        if (atoms.info.get("label_method"), atoms.info.get("label_level")) != (method_name, level):
            raise ConfigError(
                f"{output} holds frames labelled with {atoms.info.get('label_level')!r}, not {level!r}; "
                "choose another output file"
            )
        if not isinstance(frame_id, (int, np.integer)) or not 0 <= frame_id < len(frames):
            raise InputFileError(f"{output}: frame_id {frame_id!r} is not a frame of the input")
        if len(atoms) != len(frames[frame_id]) or (atoms.numbers != frames[frame_id].numbers).any():
            raise InputFileError(f"{output}: frame_id {frame_id} has other atoms than input frame {frame_id}")
        done.add(int(frame_id))
    return done


def _outcomes(
    pending: list[tuple[int, Atoms]], method: ReferenceMethod, n_workers: int, threads: int
) -> Iterator[_Outcome]:
    """Label ``pending`` frames, yielding each outcome as soon as it is ready."""
    if n_workers == 1:
        for frame_id, atoms in pending:
            yield _label_frame(frame_id, atoms, method)
        return
    with _thread_limits(threads):
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [pool.submit(_label_frame, frame_id, atoms, method) for frame_id, atoms in pending]
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as exc:
            raise MatsimError(
                "a labelling worker died (out of memory? try fewer --workers); the frames written so far are kept "
                "and a rerun resumes from them"
            ) from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _label_frame(frame_id: int, atoms: Atoms, method: ReferenceMethod) -> _Outcome:
    """Compute one frame's labels; returns its extxyz text, or the reason its SCF failed."""
    frame = atoms.copy()  # drops the input's calculator results, keeps info and arrays
    frame.calc = method.calculator()
    try:
        results = {
            "energy": frame.get_potential_energy(),
            "forces": frame.get_forces(),
            "charges": frame.get_charges(),
            "dipole": frame.get_dipole_moment(),
        }
        if frame.pbc.any():
            results["stress"] = frame.get_stress()
    except SCFNotConverged as exc:
        return _Outcome(frame_id, None, str(exc))
    frame.info.update(frame_id=frame_id, label_method=method.name, label_level=frame.calc.level_of_theory)
    frame.calc = SinglePointCalculator(frame, **results)
    text = io.StringIO()
    write(text, frame, format="extxyz")
    return _Outcome(frame_id, text.getvalue(), None)


@contextmanager
def _thread_limits(threads: int) -> Iterator[None]:
    """Set the OpenMP/BLAS thread variables that child processes inherit; restore them on exit."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _append(path: Path, text: str) -> None:
    """Append ``text`` with one ``write`` call in append mode and flush it to disk: whole frames or nothing."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # only on a full disk or a signal-interrupted write
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _sort_by_frame_id(path: Path) -> None:
    """Rewrite ``path`` with its frames sorted by ``frame_id`` (temporary file + atomic rename)."""
    frames = read(path, index=":", format="extxyz")
    ids = [atoms.info["frame_id"] for atoms in frames]
    if ids == sorted(ids):
        return
    frames.sort(key=lambda atoms: atoms.info["frame_id"])
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            write(handle, frames, format="extxyz")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, path.stat().st_mode & 0o777)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
