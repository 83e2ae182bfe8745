"""3D conformers of a molecule list into a ``STRUCTURES.h5`` file (:mod:`matsim.datasets.structures`), in parallel.

Each molecule gets the conformer the spectra pipeline starts from (:func:`matsim.reference.spectra.
conformer_from_smiles`: rdkit ETKDGv3, the lowest in MMFF94 energy of ``n_conformers``, seeded), without the
reference-method optimisation: ~50 ms per QM9 molecule on one core with 10 conformers (~7 ms with 1) instead of
~2.4 s for a GFN2 spectrum, so all of QM9 (~132k molecules) takes ~50 min on 2 cores (~8 min with 1 conformer).
Only the heavy atoms' positions are stored (the hydrogens were placed and relaxed with them; the SMILES implies
them): ~130 bytes per QM9 molecule. Molecules rdkit cannot embed go to the file's failed list. The file lists the
molecules in input order, whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from matsim.core.errors import ConfigError, MatsimError
from matsim.datasets.spectra import MoleculeEntry, molecule_key, read_molecule_list
from matsim.datasets.structures import write_structures
from matsim.reference.labeller import _thread_limits, available_cores
from matsim.reference.spectra import N_CONFORMERS, conformer_from_smiles
from matsim.reference.spectra_batch import _versions

__all__ = ["ConformersSummary", "compute_conformers"]

#: Molecules per task sent to a worker (the per-molecule work is short).
_CHUNK = 64


@dataclass(frozen=True)
class ConformersSummary:
    """What :func:`compute_conformers` did: the file, molecules written and failures (id → reason)."""

    output: Path
    done: int
    failed: dict[str, str]


def compute_conformers(input_path: str | Path, output: str | Path, n_jobs: int | None = None,
                       n_conformers: int = N_CONFORMERS, seed: int = 0, limit: int | None = None) -> ConformersSummary:
    """Embed every molecule of ``input_path`` (``.smi`` or ``.csv``, as ``matsim spectra compute`` reads) and write
    ``output`` (a new file; an existing one is replaced only when the run finishes).

    Args:
        n_jobs: worker processes (default: all cores); 1 computes in this process.
        n_conformers, seed: ETKDG conformers embedded per molecule and its random seed.
        limit: only the first molecules of the input.
    """
    n_jobs = available_cores() if n_jobs is None else n_jobs
    if n_jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {n_jobs}")
    entries = read_molecule_list(input_path, limit=limit)
    embed = partial(_embed, n_conformers=n_conformers, seed=seed)
    if n_jobs == 1:
        outcomes = list(map(embed, entries))
    else:
        with _thread_limits(1), ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(embed, entries, chunksize=_CHUNK))
    kept = [(entry, result) for entry, result in zip(entries, outcomes) if not isinstance(result, str)]
    failed = [(entry.id, entry.smiles, result) for entry, result in zip(entries, outcomes) if isinstance(result, str)]
    attrs = {"conformer": "rdkit ETKDGv3, lowest MMFF94 (UFF without MMFF parameters)", "n_conformers": n_conformers,
             "seed": seed, "software": _versions(("matsim", "rdkit"))}
    write_structures(output, [e.smiles for e, _ in kept], [e.id for e, _ in kept], [r[0] for _, r in kept],
                     [r[1:] for _, r in kept], attrs, failed)
    return ConformersSummary(Path(output), len(kept), {i: reason for i, _, reason in failed})


def _embed(entry: MoleculeEntry, n_conformers: int, seed: int) -> tuple[str, np.ndarray, np.ndarray] | str:
    """(compound key, atomic numbers, positions Å of the heavy atoms of its conformer) of one molecule, or why it
    has no conformer."""
    try:
        atoms = conformer_from_smiles(entry.smiles, n_conformers=n_conformers, seed=seed)
    except MatsimError as exc:
        return str(exc)
    heavy = atoms.numbers > 1  # AddHs puts every hydrogen after the heavy atoms
    return molecule_key(entry.smiles), atoms.numbers[heavy].astype(np.uint8), atoms.positions[heavy].astype(np.float32)
