"""Molecule lists (SMILES) in, IR spectra datasets (``SPECTRA.h5``) out: the file format, its writer and reader,
and splits by molecule.

Input molecule lists (:func:`read_molecule_list`):

* ``.smi`` / ``.smiles`` / ``.txt``: one molecule per line, ``SMILES [id]`` separated by whitespace; blank lines and
  lines starting with ``#`` are skipped; a first line ``smiles ...`` is a header. Without an id a molecule's id is its
  0-based index among the molecules of the file.
* ``.csv``: a header with a ``smiles`` column (any case) and optionally an ``id`` (or ``name``) column; without one
  the id is the 0-based row index (QM9's ``qm9_smiles.csv`` has only ``smiles``).

Every SMILES is parsed with rdkit before anything is computed; an unparseable one, an empty line field or a repeated
id is an :class:`InputFileError` naming the file and line.

``SPECTRA.h5`` (HDF5, format version :data:`FORMAT_VERSION`), n molecules, G grid points, A atoms in all, M modes
in all; row i of every per-molecule dataset is molecule i:

============================  ==================  ===============================================================
dataset                       shape, dtype        meaning
============================  ==================  ===============================================================
``grid``                      (G,) float64        wavenumbers, cm⁻¹ (500-4000 every 1 cm⁻¹ by default)
``smiles``                    (n,) str            input SMILES, as given
``id``                        (n,) str            molecule id (unique in the file)
``method``                    (n,) str            reference method (``gfn2``, ``gfn1``, ``dft``)
``ir``                        (n, G) float32      broadened IR spectrum divided by its maximum (0..1); absent in a
                                                  sticks-only file (``ir_stored = False``)
``ir_max``                    (n,) float32        that maximum, km/mol per cm⁻¹ (``ir * ir_max`` is absolute)
``energy``                    (n,) float64        energy of the optimised conformer, eV
``n_imaginary``               (n,) int32          imaginary modes (negative ``frequencies``) at that geometry
``lowest_frequency``          (n,) float32        lowest wavenumber, cm⁻¹ (the most negative when imaginary)
``atom_offsets``              (n+1,) int64        atoms of molecule i: rows ``atom_offsets[i]:atom_offsets[i+1]``
``atomic_numbers``            (A,) int16          of the optimised conformers, flat
``positions``                 (A, 3) float64      Å, optimised conformers, flat
``mode_offsets``              (n+1,) int64        modes of molecule i: rows ``mode_offsets[i]:mode_offsets[i+1]``
``frequencies``               (M,) float32        harmonic wavenumbers, cm⁻¹, ascending per molecule, 3N-6 (3N-5)
``intensities``               (M,) float32        IR intensities, km/mol
``failed/id``, ``/smiles``,   (f,) str            molecules without a spectrum and why (rdkit cannot embed,
``failed/reason``                                 optimisation or SCF failure); never in the datasets above
============================  ==================  ===============================================================

File attributes: ``format`` (``"matsim-spectra"``), ``version``, ``method``, ``level_of_theory``, ``line_shape``
(``"lorentzian"``), ``fwhm_cm-1``, ``normalisation`` (``"max"``), ``optimiser``, ``fmax_eV/A``, ``fd_step_A``, ``saddle_restarts``,
``conformer`` (how it was embedded), ``units`` (JSON: quantity → unit), ``n_molecules``: the committed row count,
and ``ir_stored`` (bool; an absent attribute, as in files written before it existed, means True).

Sticks-only files (``ir_stored = False``, ``SpectraWriter(..., store_ir=False)``, ``matsim spectra compute
--sticks-only``): the spectra are a deterministic function of the sticks (``frequencies``, ``intensities``) and of
the recipe attributes ``line_shape``, ``fwhm_cm-1``, ``normalisation`` and the ``grid``, so the file keeps only the
sticks (~1.1 kB instead of ~10-19 kB per QM9 molecule, ``benchmarks/spectra/README.md``) and :func:`read_spectra`
rebuilds ``ir`` with :func:`matsim.reference.spectra.broaden_many` and
:func:`~matsim.reference.spectra.normalise_many`, the functions the compute step uses; the compute step broadens
the sticks as stored (float32), so the rebuilt spectra are the ones a dense file holds (dense files computed before
it broadened float64 sticks: < 2e-5 apart). Rebuilding takes ~3 s per 10 000 molecules of ~40 modes on one core.
``ir_max`` is stored in both kinds. :func:`merge_spectra` (``matsim spectra merge``) concatenates files of one
recipe and converts between the two kinds.

Appending (:class:`SpectraWriter`): each molecule (or block of molecules) is written with every dataset grown by
its rows, then ``n_molecules`` is updated and the file flushed, so a run stopped between writes leaves whole
molecules; rows beyond ``n_molecules`` (a run killed in the middle of a write) are ignored by the reader and
overwritten by the next writer. An HDF5 file killed in the middle of its own metadata update can still be damaged:
keep copies of big runs.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.Chem.Scaffolds import MurckoScaffold

from matsim.core.errors import ConfigError, InputFileError
from matsim.datasets.structures import ConformerRows

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "UNITS",
    "MoleculeEntry",
    "SpectrumRecord",
    "SpectraData",
    "SpectraSplit",
    "SpectraWriter",
    "parse_smiles",
    "read_molecule_list",
    "read_spectra",
    "split_spectra",
    "save_spectra_split",
    "load_spectra_split",
    "scaffold_key",
    "molecule_key",
    "merge_spectra",
    "MergeSummary",
    "NORMALISATIONS",
]

FORMAT_NAME = "matsim-spectra"
FORMAT_VERSION = 1

#: Units of the stored quantities (also written into the file as JSON).
UNITS: dict[str, str] = {
    "grid": "cm^-1",
    "ir": "1 (divided by ir_max)",
    "ir_max": "km/mol/cm^-1",
    "energy": "eV",
    "positions": "Angstrom",
    "frequencies": "cm^-1 (negative: imaginary)",
    "lowest_frequency": "cm^-1",
    "intensities": "km/mol",
}

_STR = h5py.string_dtype()
#: Per-molecule datasets: name -> (dtype, shape of one row).
_ROW_DATASETS: dict[str, tuple[object, tuple[int, ...]]] = {
    "smiles": (_STR, ()),
    "id": (_STR, ()),
    "method": (_STR, ()),
    "ir_max": (np.float32, ()),
    "energy": (np.float64, ()),
    "n_imaginary": (np.int32, ()),
    "lowest_frequency": (np.float32, ()),
}
#: Flat variable-length datasets: name -> (dtype, trailing shape, offsets dataset).
_FLAT_DATASETS: dict[str, tuple[object, tuple[int, ...], str]] = {
    "atomic_numbers": (np.int16, (), "atom_offsets"),
    "positions": (np.float64, (3,), "atom_offsets"),
    "frequencies": (np.float32, (), "mode_offsets"),
    "intensities": (np.float32, (), "mode_offsets"),
}
_FAILED = ("id", "smiles", "reason")
#: Spectra per HDF5 chunk (gzip-compressed): ~0.9 MB of float32 at 3501 points.
_IR_CHUNK_ROWS = 64
#: Rows per HDF5 chunk of the other datasets (uncompressed: a chunk is allocated once, never regrown) -- per
#: molecule, or per atom / mode in the flat ones. h5py's guess gave the offsets 1-row chunks (an index entry per
#: molecule); these sizes keep an empty file at ~50 kB and a big sticks-only QM9 file at ~1.1 kB per molecule.
_CHUNK_ROWS = 256
_FLAT_CHUNK_ROWS = 1024
#: Normalisations a sticks-only file can be rebuilt with (``normalisation`` attribute): division by the maximum.
NORMALISATIONS: tuple[str, ...] = ("max",)
#: Molecules per block when spectra are rebuilt or files merged: 1024 spectra are 29 MB in float64.
_BLOCK_ROWS = 1024
#: File attributes that are bookkeeping, not recipe: not compared when files are merged.
_BOOKKEEPING_ATTRS = ("n_molecules", "ir_stored", "software")


@dataclass(frozen=True)
class MoleculeEntry:
    """One molecule of an input list: its SMILES, id and where it came from (``file:line``)."""

    smiles: str
    id: str
    source: str


@dataclass(frozen=True)
class SpectrumRecord:
    """Everything stored for one molecule (shapes as in the module docstring; N atoms, M modes, G grid points)."""

    smiles: str
    id: str
    method: str
    ir: np.ndarray | None  # (G,) normalised to max 1; None is accepted by a sticks-only writer only
    ir_max: float  # km/mol/cm⁻¹
    energy: float  # eV
    atomic_numbers: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 3) Å
    frequencies: np.ndarray  # (M,) cm⁻¹
    intensities: np.ndarray  # (M,) km/mol

    @property
    def n_imaginary(self) -> int:
        return int((np.asarray(self.frequencies) < 0).sum())

    @property
    def lowest_frequency(self) -> float:
        return float(np.min(self.frequencies)) if len(self.frequencies) else float("nan")


@dataclass
class SpectraData(ConformerRows):
    """A ``SPECTRA.h5`` file in memory (:func:`read_spectra`); arrays as in the module docstring (``ir`` is
    rebuilt from the sticks for a sticks-only file; :meth:`molecule` gives the optimised conformer)."""

    grid: np.ndarray
    smiles: list[str]
    ids: list[str]
    methods: list[str]
    ir: np.ndarray
    ir_max: np.ndarray
    energy: np.ndarray
    n_imaginary: np.ndarray
    lowest_frequency: np.ndarray
    atom_offsets: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    mode_offsets: np.ndarray
    frequencies: np.ndarray
    intensities: np.ndarray
    attrs: dict = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)

    def modes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frequencies (M,) cm⁻¹ and intensities (M,) km/mol of molecule ``i``."""
        rows = slice(self.mode_offsets[i], self.mode_offsets[i + 1])
        return self.frequencies[rows], self.intensities[rows]


# ----------------------------------------------------------------------------------------------------------- input
def parse_smiles(smiles: str) -> Chem.Mol:
    """The rdkit molecule of ``smiles`` (sanitised, without explicit hydrogens).

    Raises :class:`InputFileError` when rdkit cannot parse or sanitise it (rdkit's own log lines are silenced).
    """
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles) if smiles.strip() else None
    if mol is None:
        raise InputFileError(f"rdkit cannot parse the SMILES {smiles!r}")
    return mol


def read_molecule_list(path: str | Path, limit: int | None = None) -> list[MoleculeEntry]:
    """The molecules of a ``.smi`` or ``.csv`` file (module docstring), the first ``limit`` only if given.

    Raises :class:`InputFileError` for a missing file, an unknown extension, an unparseable SMILES or a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".smi", ".smiles", ".txt"):
        rows = _smi_rows(path)
    else:
        raise InputFileError(f"{path}: unknown molecule list type {suffix!r}; use .smi (SMILES [id]) or .csv")
    entries: list[MoleculeEntry] = []
    seen: dict[str, str] = {}
    for index, (line, smiles, mol_id) in enumerate(rows):
        if limit is not None and index >= limit:
            break
        source = f"{path}:{line}"
        try:
            parse_smiles(smiles)
        except InputFileError as exc:
            raise InputFileError(f"{source}: {exc}") from None
        mol_id = str(index) if mol_id is None else mol_id
        if mol_id in seen:
            raise InputFileError(f"{source}: id {mol_id!r} repeats the id of {seen[mol_id]}")
        seen[mol_id] = source
        entries.append(MoleculeEntry(smiles=smiles, id=mol_id, source=source))
    if not entries:
        raise InputFileError(f"{path}: no molecules")
    return entries


def _smi_rows(path: Path) -> Iterator[tuple[int, str, str | None]]:
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields or fields[0].startswith("#") or (number == 1 and fields[0].lower() == "smiles"):
                continue
            if len(fields) > 2:
                raise InputFileError(f"{path}:{number}: expected 'SMILES [id]', got {len(fields)} fields")
            yield number, fields[0], fields[1] if len(fields) == 2 else None


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str | None]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "smiles" not in columns:
            raise InputFileError(f"{path}: no 'smiles' column in the header {reader.fieldnames}")
        id_column = columns.get("id", columns.get("name"))
        for row in reader:
            line = reader.line_num
            smiles = (row.get(columns["smiles"]) or "").strip()
            if not smiles:
                raise InputFileError(f"{path}:{line}: empty SMILES")
            mol_id = (row.get(id_column) or "").strip() if id_column else ""
            yield line, smiles, mol_id or None


# ----------------------------------------------------------------------------------------------------------- write
class SpectraWriter:
    """Append spectra (and failures) to a ``SPECTRA.h5`` file, creating it if needed; use as a context manager.

    Args:
        path: the HDF5 file.
        grid: (G,) wavenumbers, cm⁻¹, of the spectra to write.
        attrs: file attributes (method, level of theory, broadening, ...); on an existing file those that describe
            how the spectra were computed must match, else :class:`ConfigError` (one file, one recipe).
        store_ir: write the broadened spectra (``ir``); False writes a sticks-only file (module docstring), whose
            ``attrs`` must name a line shape, FWHM and normalisation :func:`read_spectra` can rebuild. An existing
            file keeps its kind: a writer of the other kind is a :class:`ConfigError`.
    """

    #: Attributes that must agree between an existing file and a writer appending to it.
    RECIPE_KEYS = ("method", "level_of_theory", "line_shape", "fwhm_cm-1", "normalisation", "fmax_eV/A",
                   "fd_step_A", "saddle_restarts", "conformer")

    def __init__(self, path: str | Path, grid: np.ndarray, attrs: dict, store_ir: bool = True) -> None:
        self.path = Path(path)
        self.store_ir = store_ir
        if not store_ir and (problem := _rebuild_problem(attrs)):
            raise ConfigError(f"{self.path}: a sticks-only file needs a recipe the reader can rebuild: {problem}")
        exists = self.path.exists()
        try:
            self._file = h5py.File(self.path, "a")
        except OSError as exc:
            raise InputFileError(f"{self.path}: cannot open as HDF5 for writing: {exc}") from exc
        try:
            if exists and (self._file.attrs.get("format") is not None or len(self._file)):
                self._check(grid, attrs)
            else:
                self._create(np.asarray(grid, dtype=np.float64), attrs)
            self._n = int(self._file.attrs["n_molecules"])
            # id -> SMILES of the molecules in the file, and id -> (SMILES, reason) of the failed ones
            self.done: dict[str, str] = dict(zip(_strings(self._file["id"][: self._n]),
                                                 _strings(self._file["smiles"][: self._n])))
            self.failed: dict[str, tuple[str, str]] = {
                i: (s, r) for i, s, r in zip(*(_strings(self._file["failed"][k][:]) for k in _FAILED))
            }
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "SpectraWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the file."""
        if self._file.id.valid:
            self._file.flush()
            self._file.close()

    def __len__(self) -> int:
        return self._n

    def _create(self, grid: np.ndarray, attrs: dict) -> None:
        f = self._file
        f.attrs.update({"format": FORMAT_NAME, "version": FORMAT_VERSION, "units": json.dumps(UNITS), **attrs,
                        "ir_stored": self.store_ir})
        f.create_dataset("grid", data=grid)
        if self.store_ir:
            f.create_dataset("ir", shape=(0, len(grid)), maxshape=(None, len(grid)), dtype=np.float32,
                             chunks=(_IR_CHUNK_ROWS, len(grid)), compression="gzip", shuffle=True)
        for name, (dtype, row) in _ROW_DATASETS.items():
            f.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype, chunks=(_CHUNK_ROWS, *row))
        for name, (dtype, row, offsets) in _FLAT_DATASETS.items():
            f.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype,
                             chunks=(_FLAT_CHUNK_ROWS, *row))
            if offsets not in f:
                f.create_dataset(offsets, data=np.zeros(1, dtype=np.int64), maxshape=(None,), chunks=(_CHUNK_ROWS,))
        for name in _FAILED:
            f.create_dataset(f"failed/{name}", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(_CHUNK_ROWS,))
        f.attrs["n_molecules"] = 0
        f.flush()

    def _check(self, grid: np.ndarray, attrs: dict) -> None:
        f = self._file
        if f.attrs.get("format") != FORMAT_NAME:
            raise InputFileError(f"{self.path}: not a {FORMAT_NAME} file")
        if int(f.attrs.get("version", -1)) != FORMAT_VERSION:
            raise InputFileError(f"{self.path}: format version {f.attrs.get('version')}, this matsim writes {FORMAT_VERSION}")
        if f["grid"].shape != np.shape(grid) or not np.allclose(f["grid"][:], grid):
            raise ConfigError(f"{self.path} holds spectra on another wavenumber grid; choose another output file")
        for key in self.RECIPE_KEYS:
            if key in attrs and key in f.attrs and f.attrs[key] != attrs[key]:
                raise ConfigError(f"{self.path} was computed with {key} = {f.attrs[key]!r}, not {attrs[key]!r}; "
                                  "choose another output file")
        stored = _ir_stored(f.attrs)
        if stored != self.store_ir:
            kinds = {True: "the broadened spectra (ir)", False: "sticks only (ir_stored = False)"}
            raise ConfigError(f"{self.path} stores {kinds[stored]}, this run would write {kinds[self.store_ir]}; "
                              "choose another output file (`matsim spectra merge` converts between the two)")
        if stored and "ir" not in f:
            raise InputFileError(f"{self.path}: a {FORMAT_NAME} file without ir")

    def append(self, record: SpectrumRecord) -> None:
        """Write one molecule's spectrum (then commit the row count and flush); its id must be new."""
        self.extend([record])

    def extend(self, records: Sequence[SpectrumRecord]) -> None:
        """Write molecules as one block (then commit the row count and flush); their ids must be new.

        Raises :class:`ConfigError` for a repeated id, a spectrum not on the file's grid (or missing in a dense
        file) or sticks / atoms of unequal lengths; nothing of the block is committed then.
        """
        f, n = self._file, self._n
        ids: set[str] = set()
        for record in records:
            if record.id in self.done or record.id in ids:
                raise ConfigError(f"{self.path}: id {record.id!r} is already in the file")
            ids.add(record.id)
            if self.store_ir and (record.ir is None or len(record.ir) != f["ir"].shape[1]):
                points = "no" if record.ir is None else len(record.ir)
                raise ConfigError(f"spectrum of {record.id!r} has {points} points, the grid {f['ir'].shape[1]}")
            if len(record.frequencies) != len(record.intensities) or \
                    len(record.atomic_numbers) != len(np.reshape(record.positions, (-1, 3))):
                raise ConfigError(f"{record.id!r}: frequencies and intensities, or atomic numbers and positions, "
                                  "differ in length")
        if not records:
            return
        if self.store_ir:
            _set_rows(f["ir"], n, np.stack([record.ir for record in records]))
        columns = {"smiles": [r.smiles for r in records], "id": [r.id for r in records],
                   "method": [r.method for r in records], "ir_max": [r.ir_max for r in records],
                   "energy": [r.energy for r in records], "n_imaginary": [r.n_imaginary for r in records],
                   "lowest_frequency": [r.lowest_frequency for r in records]}
        for name, values in columns.items():
            dtype = _ROW_DATASETS[name][0]
            _set_rows(f[name], n, np.array(values, dtype=object if dtype is _STR else dtype))
        flat = {"atomic_numbers": [r.atomic_numbers for r in records],
                "positions": [np.reshape(r.positions, (-1, 3)) for r in records],
                "frequencies": [r.frequencies for r in records], "intensities": [r.intensities for r in records]}
        for offsets in ("atom_offsets", "mode_offsets"):
            names = [k for k, v in _FLAT_DATASETS.items() if v[2] == offsets]
            start = int(f[offsets][n])
            ends = start + np.cumsum([len(values) for values in flat[names[0]]])
            for name in names:
                dataset = f[name]
                dataset.resize(int(ends[-1]), axis=0)
                dataset[start:] = np.concatenate(flat[name]).astype(_FLAT_DATASETS[name][0])
            _set_rows(f[offsets], n + 1, ends)
        self._n = n + len(records)
        f.attrs["n_molecules"] = self._n
        self.done.update((r.id, r.smiles) for r in records)
        retried = [i for i in ids if i in self.failed]  # molecules that failed before and succeeded now
        for mol_id in retried:
            del self.failed[mol_id]
        if retried:
            self._write_failed()
        f.flush()

    def add_failure(self, mol_id: str, smiles: str, reason: str) -> None:
        """Record that ``mol_id`` has no spectrum and why (replacing an earlier reason); flushed at once."""
        self.add_failures([(mol_id, smiles, reason)])

    def add_failures(self, failures: Iterable[tuple[str, str, str]]) -> None:
        """Record ``(id, smiles, reason)`` of molecules without a spectrum (replacing earlier reasons); flushed."""
        for mol_id, smiles, reason in failures:
            self.failed[mol_id] = (smiles, reason)
        self._write_failed()
        self._file.flush()

    def _write_failed(self) -> None:
        columns = [list(self.failed), [s for s, _ in self.failed.values()], [r for _, r in self.failed.values()]]
        for name, values in zip(_FAILED, columns):
            dataset = self._file[f"failed/{name}"]
            dataset.resize(len(values), axis=0)
            if values:
                dataset[:] = np.array(values, dtype=object)


def _set_rows(dataset: h5py.Dataset, row: int, values: np.ndarray) -> None:
    """``dataset[row:row + len(values)] = values``, sizing the dataset to end there (rows left beyond it by a killed
    run are overwritten or cut)."""
    stop = row + len(values)
    if dataset.shape[0] != stop:
        dataset.resize(stop, axis=0)
    dataset[row:stop] = values


def _strings(values: np.ndarray) -> list[str]:
    """The entries of a string array read from HDF5 as ``str``."""
    return [s.decode() if isinstance(s, bytes) else str(s) for s in values]


def _ir_stored(attrs: h5py.AttributeManager | dict) -> bool:
    """Whether a file with these attributes stores ``ir`` (an absent ``ir_stored`` means it does)."""
    return bool(attrs.get("ir_stored", True))


def _rebuild_problem(attrs: h5py.AttributeManager | dict) -> str | None:
    """Why spectra of this recipe (``line_shape``, ``fwhm_cm-1``, ``normalisation``) cannot be rebuilt, or None."""
    from matsim.reference.spectra import LINE_SHAPES  # reference imports this module: import on use

    shape, fwhm, normalisation = (attrs.get(key) for key in ("line_shape", "fwhm_cm-1", "normalisation"))
    if shape not in LINE_SHAPES:
        return f"line_shape {shape!r} is unknown (this matsim knows {', '.join(LINE_SHAPES)})"
    if normalisation not in NORMALISATIONS:
        return f"normalisation {normalisation!r} is unknown (this matsim knows {', '.join(NORMALISATIONS)})"
    if not isinstance(fwhm, (int, float, np.number)) or not fwhm > 0:
        return f"fwhm_cm-1 {fwhm!r} is not a positive number"
    return None


def _rebuild_ir(path: Path, attrs: h5py.AttributeManager | dict, grid: np.ndarray, frequencies: np.ndarray,
                intensities: np.ndarray, mode_offsets: np.ndarray) -> np.ndarray:
    """(n, G) float32 spectra of a sticks-only file, rebuilt block by block from the sticks of molecules
    ``0..n-1`` (``mode_offsets`` (n+1,), whose first entry is the row of ``frequencies[0]``: a slice of a file).

    Raises :class:`InputFileError` when the file's recipe cannot be rebuilt (unknown line shape or normalisation).
    """
    from matsim.reference.spectra import broaden_many, normalise_many  # reference imports this module

    if problem := _rebuild_problem(attrs):
        raise InputFileError(f"{path}: sticks-only file whose spectra cannot be rebuilt: {problem}")
    shape, fwhm = str(attrs["line_shape"]), float(attrs["fwhm_cm-1"])
    base = int(mode_offsets[0])
    ir = np.empty((len(mode_offsets) - 1, len(grid)), dtype=np.float32)
    for first in range(0, len(ir), _BLOCK_ROWS):
        offsets = mode_offsets[first : first + _BLOCK_ROWS + 1]
        sticks = slice(int(offsets[0]) - base, int(offsets[-1]) - base)
        broadened = broaden_many(frequencies[sticks], intensities[sticks], offsets, grid, fwhm, shape)
        ir[first : first + len(offsets) - 1] = normalise_many(broadened)[0]
    return ir


# ------------------------------------------------------------------------------------------------------------ read
def _open_spectra(path: Path) -> h5py.File:
    """``path`` opened read-only after checking that it is a complete ``SPECTRA.h5``; raises :class:`InputFileError`."""
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not an HDF5 file ({exc})") from exc
    required = ("grid", *(("ir",) if _ir_stored(f.attrs) else ()), "atom_offsets", "mode_offsets", *_ROW_DATASETS,
                *_FLAT_DATASETS, *(f"failed/{name}" for name in _FAILED))
    problem = None
    if f.attrs.get("format") != FORMAT_NAME:
        problem = f"{path}: not a {FORMAT_NAME} file"
    elif (missing := [name for name in required if name not in f]) or "n_molecules" not in f.attrs:
        problem = f"{path}: a {FORMAT_NAME} file without {', '.join(missing) or 'n_molecules'}"
    if problem:
        f.close()
        raise InputFileError(problem)
    return f


def read_spectra(path: str | Path) -> SpectraData:
    """Read a whole ``SPECTRA.h5`` file (committed rows only), rebuilding ``ir`` from the sticks of a sticks-only
    file (module docstring). Raises :class:`InputFileError` if it is not one, or its spectra cannot be rebuilt."""
    path = Path(path)
    with _open_spectra(path) as f:
        n = int(f.attrs["n_molecules"])
        atoms = f["atom_offsets"][: n + 1]
        modes = f["mode_offsets"][: n + 1]
        grid, frequencies, intensities = f["grid"][:], f["frequencies"][: modes[-1]], f["intensities"][: modes[-1]]
        ir = f["ir"][:n] if _ir_stored(f.attrs) else _rebuild_ir(path, f.attrs, grid, frequencies, intensities, modes)
        return SpectraData(
            grid=grid,
            smiles=_strings(f["smiles"][:n]),
            ids=_strings(f["id"][:n]),
            methods=_strings(f["method"][:n]),
            ir=ir,
            ir_max=f["ir_max"][:n],
            energy=f["energy"][:n],
            n_imaginary=f["n_imaginary"][:n],
            lowest_frequency=f["lowest_frequency"][:n],
            atom_offsets=atoms,
            atomic_numbers=f["atomic_numbers"][: atoms[-1]],
            positions=f["positions"][: atoms[-1]],
            mode_offsets=modes,
            frequencies=frequencies,
            intensities=intensities,
            attrs={k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()},
            failed=[dict(zip(_FAILED, row)) for row in zip(*(_strings(f["failed"][k][:]) for k in _FAILED))],
        )


# ----------------------------------------------------------------------------------------------------------- merge
@dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge_spectra` wrote: ``molecules`` rows and ``failed`` entries, dense or sticks-only."""

    output: Path
    molecules: int
    failed: int
    store_ir: bool


def merge_spectra(inputs: Sequence[str | Path], output: str | Path, store_ir: bool = True) -> MergeSummary:
    """Concatenate ``SPECTRA.h5`` files of one grid and recipe into a new file, dense or sticks-only (``store_ir``).

    Molecules keep the order of the inputs (and within each); ids must be unique across them. The failed lists are
    merged (a later file's reason wins; an id computed in any input is not a failure). Molecules are streamed in
    blocks of :data:`_BLOCK_ROWS`, so memory does not grow with the file; dense spectra are copied as stored, those
    of sticks-only inputs rebuilt only for a dense output. The output is written as ``OUTPUT.partial`` and renamed
    when complete, so a stopped merge leaves no file that looks whole.

    Raises :class:`ConfigError` when ``output`` exists, no input is given, or the inputs differ in grid or in a
    recipe attribute (named; all attributes but ``n_molecules``, ``ir_stored`` and ``software`` count);
    :class:`InputFileError` for an input that is not a spectra file, given twice, or an id in two inputs.
    """
    paths, output = [Path(p) for p in inputs], Path(output)
    if not paths:
        raise ConfigError("no spectra files to merge")
    if output.exists():
        raise ConfigError(f"{output} exists; merge into a new file")
    seen_paths: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen_paths:
            raise InputFileError(f"{path} is given twice (as {seen_paths[path.resolve()]})")
        seen_paths[path.resolve()] = path
    grid, attrs = _check_mergeable(paths)
    partial = output.with_name(output.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with SpectraWriter(partial, grid, attrs, store_ir=store_ir) as writer:
            failures: list[tuple[str, str, str]] = []
            for path in paths:
                with _open_spectra(path) as f:
                    n = int(f.attrs["n_molecules"])
                    for first in range(0, n, _BLOCK_ROWS):
                        writer.extend(_records(path, f, first, min(first + _BLOCK_ROWS, n), with_ir=store_ir))
                    failures += zip(*(_strings(f["failed"][k][:]) for k in _FAILED))
            writer.add_failures(row for row in failures if row[0] not in writer.done)
            summary = MergeSummary(output, len(writer), len(writer.failed), store_ir)
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return summary


def _check_mergeable(paths: list[Path]) -> tuple[np.ndarray, dict]:
    """The common grid and attributes (for the output) of files to merge, after checking grid, recipe and ids."""
    owners: dict[str, Path] = {}
    grid: np.ndarray | None = None
    recipe: dict = {}
    software: list[str] = []
    for path in paths:
        with _open_spectra(path) as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            if grid is None:
                grid, recipe = f["grid"][:], {k: v for k, v in attrs.items() if k not in _BOOKKEEPING_ATTRS}
            elif f["grid"].shape != grid.shape or not np.allclose(f["grid"][:], grid):
                raise ConfigError(f"{path}: grid differs from that of {paths[0]}; only files on one grid merge")
            for key in sorted((set(recipe) | set(attrs)) - set(_BOOKKEEPING_ATTRS)):
                if attrs.get(key) != recipe.get(key):
                    raise ConfigError(f"{path} has {key} = {attrs.get(key)!r} but {paths[0]} has {recipe.get(key)!r}; "
                                      "only files of one recipe merge")
            if "software" in attrs and attrs["software"] not in software:
                software.append(str(attrs["software"]))
            for mol_id in _strings(f["id"][: int(f.attrs["n_molecules"])]):
                if mol_id in owners:
                    raise InputFileError(f"id {mol_id!r} is in both {owners[mol_id]} and {path}; ids must be unique "
                                         "across merged files")
                owners[mol_id] = path
    assert grid is not None
    attrs = {k: v for k, v in recipe.items() if k not in ("format", "version", "units")}
    if software:
        attrs["software"] = "; ".join(software)
    return grid, attrs


def _records(path: Path, f: h5py.File, first: int, stop: int, with_ir: bool) -> list[SpectrumRecord]:
    """Molecules ``first:stop`` of an open spectra file as records (``ir`` None unless ``with_ir``)."""
    atoms = f["atom_offsets"][first : stop + 1]
    modes = f["mode_offsets"][first : stop + 1]
    numbers = f["atomic_numbers"][atoms[0] : atoms[-1]]
    positions = f["positions"][atoms[0] : atoms[-1]]
    frequencies = f["frequencies"][modes[0] : modes[-1]]
    intensities = f["intensities"][modes[0] : modes[-1]]
    ir: np.ndarray | list[None] = [None] * (stop - first)
    if with_ir:
        ir = f["ir"][first:stop] if _ir_stored(f.attrs) else \
            _rebuild_ir(path, f.attrs, f["grid"][:], frequencies, intensities, modes)
    columns = zip(_strings(f["smiles"][first:stop]), _strings(f["id"][first:stop]), _strings(f["method"][first:stop]),
                  f["ir_max"][first:stop], f["energy"][first:stop], ir)
    records = []
    for i, (smiles, mol_id, method, ir_max, energy, spectrum) in enumerate(columns):
        a = slice(atoms[i] - atoms[0], atoms[i + 1] - atoms[0])
        m = slice(modes[i] - modes[0], modes[i + 1] - modes[0])
        records.append(SpectrumRecord(smiles=smiles, id=mol_id, method=method, ir=spectrum, ir_max=float(ir_max),
                                      energy=float(energy), atomic_numbers=numbers[a], positions=positions[a],
                                      frequencies=frequencies[m], intensities=intensities[m]))
    return records


# ----------------------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class SpectraSplit:
    """Row indices of a spectra file in train / valid / test, and how they were drawn."""

    train: list[int]
    valid: list[int]
    test: list[int]
    kind: str
    seed: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "train": self.train, "valid": self.valid, "test": self.test}


def scaffold_key(smiles: str) -> str:
    """The Bemis-Murcko scaffold SMILES (generic ring-system skeleton with linkers); ``""`` for acyclic molecules."""
    mol = Chem.MolFromSmiles(smiles)
    return "" if mol is None else MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def molecule_key(smiles: str) -> str:
    """Canonical SMILES of the canonical tautomer without stereo: rows of one compound (duplicates, stereoisomers,
    tautomers, which :mod:`matsim.metrics.spectra` counts as an exact match) stay on one side of a split."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return smiles
    with rdBase.BlockLogs():
        mol = rdMolStandardize.TautomerEnumerator().Canonicalize(mol)
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(mol)


def split_spectra(
    smiles: Sequence[str], valid: float = 0.1, test: float = 0.1, kind: str = "random", seed: int = 0
) -> SpectraSplit:
    """Split rows by molecule: every row of one compound (same canonical tautomer, stereo ignored) or, with
    ``kind="scaffold"``, of one Bemis-Murcko scaffold lands in the same set.

    ``random``: the groups are shuffled with ``numpy.random.default_rng(seed)`` and filled into test, valid, train.
    ``scaffold``: groups are ordered largest first (the common practice of MoleculeNet/chemprop, so test holds rare
    scaffolds), ties broken by a seeded shuffle, and filled into train until it holds ``1 - valid - test`` of the
    rows, then valid, then test. Fractions are of rows and met up to the size of one group.
    """
    if kind not in ("random", "scaffold"):
        raise ConfigError(f"unknown split kind {kind!r}; choose random or scaffold")
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ConfigError(f"valid ({valid}) and test ({test}) must be fractions summing to below 1")
    key = scaffold_key if kind == "scaffold" else molecule_key
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(key(s), []).append(i)
    rng = np.random.default_rng(seed)
    order = [list(groups.values())[j] for j in rng.permutation(len(groups))]
    n = len(smiles)
    sets: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    if kind == "scaffold":
        order.sort(key=len, reverse=True)  # stable: the shuffle breaks ties
        targets = [("train", (1 - valid - test) * n), ("valid", (1 - test) * n), ("test", float(n))]
    else:
        targets = [("test", test * n), ("valid", (test + valid) * n), ("train", float(n))]
    filled = 0
    for group in order:
        name = next(name for name, limit in targets if filled + len(group) / 2 <= limit or name == targets[-1][0])
        sets[name].extend(group)
        filled += len(group)
    return SpectraSplit(**{k: sorted(v) for k, v in sets.items()}, kind=kind, seed=seed)


def save_spectra_split(split: SpectraSplit, path: str | Path) -> None:
    """Write a split as JSON (``kind``, ``seed``, ``train``/``valid``/``test`` row indices)."""
    Path(path).write_text(json.dumps(split.to_dict()) + "\n")


def load_spectra_split(path: str | Path) -> SpectraSplit:
    """Read a split written by :func:`save_spectra_split`."""
    try:
        data = json.loads(Path(path).read_text())
        return SpectraSplit(**{k: data[k] for k in ("train", "valid", "test", "kind", "seed")})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"{path}: not a spectra split file ({exc})") from exc
