"""``STRUCTURES.h5``: molecules with one 3D conformer each and no spectra.

DiffSpectra learns its structure prior (which graphs and geometries are molecules) from such a file, next to the
far fewer molecules that have reference spectra (``SPECTRA.h5``, :mod:`matsim.datasets.spectra`); ``matsim spectra
conformers`` writes it (:mod:`matsim.reference.conformers`).

Layout (HDF5, n molecules, A atoms in all):

* ``smiles`` (n,), ``ids`` (n,), ``keys`` (n,): UTF-8, fixed width, gzip; ``keys`` are the compounds'
  :func:`matsim.datasets.spectra.molecule_key` (canonical tautomer, no stereo: 2.6 ms each, so they are stored),
  which decide what a split by molecule keeps apart;
* ``atom_offsets`` (n + 1,) int64: molecule i's atoms are rows ``atom_offsets[i]:atom_offsets[i + 1]``;
* ``atomic_numbers`` (A,) uint8 and ``positions`` (A, 3) float32 Å: the SMILES's heavy atoms in SMILES order (what
  :func:`matsim.datasets.molecules.molecule_graph` expects); :mod:`matsim.reference.conformers` leaves the
  hydrogens out (half the size; the SMILES implies them), a file may also list them after the heavy atoms, in
  rdkit's ``AddHs`` order, as ``SPECTRA.h5`` conformers do;
* ``failed_ids``, ``failed_smiles``, ``failed_reasons`` (f,) str: molecules without a conformer;
* attributes: ``format`` = ``"matsim-structures"``, ``version``, the conformer recipe (``conformer``,
  ``n_conformers``, ``seed``) and ``software`` (versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from matsim.core.errors import InputFileError

__all__ = ["STRUCTURES_FORMAT", "ConformerRows", "StructuresData", "read_structures", "write_structures"]

#: The ``format`` attribute of a structures file.
STRUCTURES_FORMAT = "matsim-structures"
_VERSION = 1
_TEXT = h5py.string_dtype("utf-8")


class ConformerRows:
    """Per-molecule conformers stored flat: ``ids`` (n,), ``atom_offsets`` (n + 1,), ``atomic_numbers`` (A,),
    ``positions`` (A, 3) Å (shared by the structures and spectra files in memory)."""

    ids: list[str]
    atom_offsets: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers (N,) and positions (N, 3) Å of molecule ``i``'s conformer."""
        rows = slice(self.atom_offsets[i], self.atom_offsets[i + 1])
        return self.atomic_numbers[rows], self.positions[rows]


@dataclass
class StructuresData(ConformerRows):
    """A structures file in memory (arrays as in the module docstring)."""

    smiles: list[str]
    ids: list[str]
    keys: list[str]
    atom_offsets: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    attrs: dict = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)


def write_structures(path: str | Path, smiles: Sequence[str], ids: Sequence[str], keys: Sequence[str],
                     conformers: Sequence[tuple[np.ndarray, np.ndarray]], attrs: dict,
                     failed: Sequence[tuple[str, str, str]] = ()) -> None:
    """Write molecules (``keys``: their :func:`~matsim.datasets.spectra.molecule_key`; ``conformers``: (atomic
    numbers (N,), positions (N, 3) Å) per molecule) and the failures ((id, smiles, reason) each) to a new file at
    ``path`` (replaced if it exists); ``attrs`` are stored as file attributes next to ``format`` and ``version``."""
    if not len(smiles) == len(ids) == len(keys) == len(conformers):
        raise ValueError(f"{len(smiles)} SMILES, {len(ids)} ids, {len(keys)} keys and {len(conformers)} conformers")
    counts = np.array([len(numbers) for numbers, _ in conformers], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    numbers = np.concatenate([np.asarray(n, dtype=np.uint8) for n, _ in conformers]) if conformers else \
        np.zeros(0, np.uint8)
    positions = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 3) for _, p in conformers]) \
        if conformers else np.zeros((0, 3), np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as f:
        f.attrs.update({"format": STRUCTURES_FORMAT, "version": _VERSION, **attrs})
        for name, values in (("smiles", smiles), ("ids", ids), ("keys", keys)):
            f.create_dataset(name, data=_fixed_width(values), compression="gzip")
        f.create_dataset("atom_offsets", data=offsets)
        f.create_dataset("atomic_numbers", data=numbers, compression="gzip")
        f.create_dataset("positions", data=positions, compression="gzip")
        for i, name in enumerate(("failed_ids", "failed_smiles", "failed_reasons")):
            f.create_dataset(name, data=[row[i] for row in failed], dtype=_TEXT)
    partial.replace(path)


def _fixed_width(values: Sequence[str]) -> np.ndarray:
    """UTF-8 byte strings padded to the longest (gzip packs them ~10x tighter than HDF5's variable-length strings)."""
    encoded = [v.encode() for v in values]
    return np.array(encoded, dtype=f"S{max((len(v) for v in encoded), default=1) or 1}")


def read_structures(path: str | Path) -> StructuresData:
    """Read a structures file; :class:`InputFileError` when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != STRUCTURES_FORMAT:
                raise InputFileError(f"{path}: not a structures file (format attribute "
                                     f"{f.attrs.get('format')!r}, expected {STRUCTURES_FORMAT!r})")
            text = {name: [s.decode() if isinstance(s, bytes) else str(s) for s in f[name][()]]
                    for name in ("smiles", "ids", "keys", "failed_ids", "failed_smiles", "failed_reasons")}
            data = StructuresData(smiles=text["smiles"], ids=text["ids"], keys=text["keys"],
                                  atom_offsets=f["atom_offsets"][()],
                                  atomic_numbers=f["atomic_numbers"][()].astype(np.int64),
                                  positions=f["positions"][()].astype(np.float64),
                                  attrs={k: v.item() if hasattr(v, "item") else v for k, v in f.attrs.items()})
    except InputFileError:
        raise
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    except KeyError as exc:
        raise InputFileError(f"{path}: structures file without the dataset {exc}") from None
    data.failed = [{"id": i, "smiles": s, "reason": r}
                   for i, s, r in zip(text["failed_ids"], text["failed_smiles"], text["failed_reasons"])]
    if len(data.atom_offsets) != len(data.ids) + 1 or data.atom_offsets[-1] != len(data.atomic_numbers):
        raise InputFileError(f"{path}: atom_offsets do not match the molecules and atoms stored")
    return data
