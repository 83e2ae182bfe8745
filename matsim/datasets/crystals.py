"""Crystal datasets in CDVAE's CSV format (``perov_5``, ``carbon_24``, ``mp_20``): one CIF per row plus properties.

Each row becomes a canonical crystal as CDVAE prepares it: the CIF is parsed by pymatgen, Niggli-reduced
(``niggli=True``) and rebuilt from its lattice parameters (``Lattice.from_parameters``: c along z, a in the xz
plane), so a crystal is fully described by

=============== ========= =============================================
``frac_coords`` (N, 3)    fractional coordinates in [0, 1)
``atom_types``  (N,) int  atomic numbers
``lengths``     (B, 3)    a, b, c in Å
``angles``      (B, 3)    α, β, γ in degrees
``num_atoms``   (B,) int  atoms per crystal
``property``    (B,)      the chosen property column (NaN where empty)
=============== ========= =============================================

stored back to back (crystal b owns atoms ``ptr[b]:ptr[b+1]``). Edges are not stored: generative decoders need the
graph of the *noisy* structure at every step, so models build it on the fly
(:func:`matsim.models.layers.periodic.periodic_radius_graph`).

Parsing is the slow part (~5 ms per CIF); the parsed tensors are cached as one file of plain tensors, read with
``torch.load(weights_only=True)``, keyed by the SHA-256 of the CSV's bytes and the reading options, written
atomically. The cache lives in ``cache_dir`` (default ``$MATSIM_CACHE_DIR/crystals`` or
``~/.cache/matsim/crystals``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from matsim.core.errors import InputFileError
from matsim.core.io import atomic_torch_save
from matsim.datasets.graphs import file_digest

__all__ = ["CrystalBatch", "CrystalDataset", "canonical_structure", "structure_from_arrays", "default_cache_dir"]

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$MATSIM_CACHE_DIR/crystals`` or ``~/.cache/matsim/crystals``."""
    env = os.environ.get("MATSIM_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "matsim") / "crystals"


def canonical_structure(structure: Structure, niggli: bool = True) -> Structure:
    """CDVAE's canonical form: optionally Niggli-reduced, lattice rebuilt from its parameters, coords in [0, 1)."""
    if niggli:
        structure = structure.get_reduced_structure()
    lattice = Lattice.from_parameters(*structure.lattice.parameters)
    return Structure(lattice, structure.species, np.mod(structure.frac_coords, 1.0), coords_are_cartesian=False)


def structure_from_arrays(frac_coords: np.ndarray, atom_types: np.ndarray, lengths: np.ndarray,
                          angles: np.ndarray) -> Structure | None:
    """A pymatgen Structure from one crystal's arrays (Å, degrees); ``None`` if they describe no valid crystal."""
    values = np.concatenate([np.ravel(frac_coords), np.ravel(lengths), np.ravel(angles)])
    if len(atom_types) == 0 or not np.all(np.isfinite(values)) or np.any(np.asarray(lengths) <= 0):
        return None
    try:
        lattice = Lattice.from_parameters(*np.asarray(lengths, dtype=float), *np.asarray(angles, dtype=float))
        if not np.all(np.isfinite(lattice.matrix)) or abs(lattice.volume) < 1e-8:
            return None
        return Structure(lattice, [int(z) for z in atom_types], np.mod(frac_coords, 1.0), coords_are_cartesian=False)
    except Exception:  # pymatgen rejects unknown elements / singular lattices in several ways: a failed sample
        return None


@dataclass
class CrystalBatch:
    """A batch of crystals (fields as in the module docstring, plus ``batch`` (N,): the crystal of each atom)."""

    frac_coords: torch.Tensor
    atom_types: torch.Tensor
    lengths: torch.Tensor
    angles: torch.Tensor
    num_atoms: torch.Tensor
    batch: torch.Tensor
    property: torch.Tensor

    @property
    def num_systems(self) -> int:
        return int(self.num_atoms.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CrystalBatch":
        return CrystalBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                               for f in fields(self)})

    def structures(self) -> list[Structure | None]:
        """The crystals as pymatgen Structures."""
        counts = self.num_atoms.tolist()
        frac = torch.split(self.frac_coords.detach().cpu(), counts)
        types = torch.split(self.atom_types.detach().cpu(), counts)
        return [structure_from_arrays(f.numpy(), t.numpy(), lengths.numpy(), angles.numpy())
                for f, t, lengths, angles in zip(frac, types, self.lengths.detach().cpu(), self.angles.detach().cpu())]


class CrystalDataset:
    """Crystals of one CDVAE-style CSV (see the module docstring); build with :meth:`from_csv` or
    :meth:`from_structures`, take subsets with :meth:`select`, batches with :meth:`batch`."""

    def __init__(self, store: dict[str, torch.Tensor], meta: dict, indices: Sequence[int] | None = None) -> None:
        self.store = store
        self.meta = meta
        self.ptr = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), store["num_atoms"]]), 0)
        self.indices = list(range(len(store["num_atoms"]))) if indices is None else [int(i) for i in indices]

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_structures(cls, structures: Sequence[Structure], properties: Sequence[float] | None = None,
                        niggli: bool = True, meta: dict | None = None) -> "CrystalDataset":
        """A dataset of pymatgen structures (made canonical, see :func:`canonical_structure`)."""
        frac, types, lengths, angles, counts = [], [], [], [], []
        for structure in structures:
            crystal = canonical_structure(structure, niggli)
            frac.append(torch.tensor(crystal.frac_coords, dtype=torch.float64))
            types.append(torch.tensor(crystal.atomic_numbers, dtype=torch.long))
            lengths.append(crystal.lattice.abc)
            angles.append(crystal.lattice.angles)
            counts.append(len(crystal))
        values = [math.nan] * len(counts) if properties is None else [float(p) for p in properties]
        store = {
            "frac_coords": torch.cat(frac) if frac else torch.zeros(0, 3, dtype=torch.float64),
            "atom_types": torch.cat(types) if types else torch.zeros(0, dtype=torch.long),
            "lengths": torch.tensor(lengths, dtype=torch.float64).reshape(-1, 3),
            "angles": torch.tensor(angles, dtype=torch.float64).reshape(-1, 3),
            "num_atoms": torch.tensor(counts, dtype=torch.long),
            "property": torch.tensor(values, dtype=torch.float64),
        }
        return cls(store, dict(meta or {}))

    @classmethod
    def from_csv(cls, path: str | Path, property: str | None = None, niggli: bool = True,  # noqa: A002
                 max_rows: int | None = None, cache: bool = True,
                 cache_dir: str | Path | None = None) -> "CrystalDataset":
        """Read a CSV with a ``cif`` column (and ``property`` if named), cached on disk (see the module docstring).

        Raises :class:`InputFileError` for a missing file, a missing column, or a CIF that pymatgen cannot read
        (training data must be clean; the message names the row).
        """
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"crystal data file not found: {path}")
        options = {"property": property, "niggli": niggli, "max_rows": max_rows, "version": CACHE_VERSION}
        cache_file = None
        if cache:
            key = hashlib.sha256((file_digest(path) + json.dumps(options, sort_keys=True)).encode()).hexdigest()
            cache_file = Path(cache_dir or default_cache_dir()) / f"{path.stem}-{key[:16]}.pt"
            if cache_file.is_file():
                try:
                    payload = torch.load(cache_file, map_location="cpu", weights_only=True)
                    return cls(payload["store"], payload["meta"])
                except Exception:  # a damaged cache file is rebuilt
                    pass
        structures, properties, ids = _read_csv(path, property, max_rows)
        dataset = cls.from_structures(structures, properties if property else None, niggli,
                                      meta={"source": str(path), "property": property, "ids": ids, **options})
        if cache_file is not None:
            try:
                atomic_torch_save({"store": dataset.store, "meta": dataset.meta}, cache_file)
            except OSError:  # a read-only or full cache folder only costs the parsing next time
                pass
        return dataset

    # --- access ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def select(self, indices: Sequence[int]) -> "CrystalDataset":
        """The subset of items ``indices`` (positions in this dataset), sharing storage."""
        return CrystalDataset(self.store, self.meta, [self.indices[int(i)] for i in indices])

    def batch(self, items: Sequence[int], dtype: torch.dtype = torch.float32) -> CrystalBatch:
        """The crystals at positions ``items`` as one :class:`CrystalBatch` (floats in ``dtype``)."""
        rows = torch.tensor([self.indices[int(i)] for i in items], dtype=torch.long)
        counts = self.store["num_atoms"][rows]
        starts = self.ptr[rows]
        atoms = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts) + torch.arange(
            int(counts.sum()))
        return CrystalBatch(
            frac_coords=self.store["frac_coords"][atoms].to(dtype),
            atom_types=self.store["atom_types"][atoms],
            lengths=self.store["lengths"][rows].to(dtype),
            angles=self.store["angles"][rows].to(dtype),
            num_atoms=counts,
            batch=torch.repeat_interleave(torch.arange(len(rows)), counts),
            property=self.store["property"][rows].to(dtype),
        )

    def structures(self, items: Sequence[int] | None = None) -> list[Structure | None]:
        """The crystals at positions ``items`` (all by default) as pymatgen Structures."""
        items = range(len(self)) if items is None else items
        return self.batch(list(items), dtype=torch.float64).structures() if len(items) else []

    def species(self) -> list[int]:
        """Sorted atomic numbers present in this subset."""
        return sorted(set(self.batch(range(len(self))).atom_types.tolist())) if len(self) else []

    def num_atoms(self) -> torch.Tensor:
        """(B,) atoms per crystal of this subset."""
        return self.store["num_atoms"][torch.tensor(self.indices, dtype=torch.long)]

    def properties(self) -> torch.Tensor:
        """(B,) property values of this subset (NaN where missing), float64."""
        return self.store["property"][torch.tensor(self.indices, dtype=torch.long)]

    def lattice_parameters(self) -> torch.Tensor:
        """(B, 6) lengths (Å) and angles (degrees) of this subset, float64."""
        rows = torch.tensor(self.indices, dtype=torch.long)
        return torch.cat([self.store["lengths"][rows], self.store["angles"][rows]], dim=1)


def _read_csv(path: Path, property: str | None, max_rows: int | None  # noqa: A002
              ) -> tuple[list[Structure], list[float], list[str]]:
    csv.field_size_limit(sys.maxsize)
    structures, values, ids = [], [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "cif" not in columns:
            raise InputFileError(f"{path}: no 'cif' column (columns: {', '.join(columns)})")
        if property is not None and property not in columns:
            numeric = [c for c in columns if c not in ("", "cif", "material_id", "formula", "pretty_formula",
                                                     "elements")]
            raise InputFileError(f"{path}: no property column {property!r} (columns: {', '.join(numeric)})")
        for row_number, row in enumerate(reader):
            if max_rows is not None and row_number >= max_rows:
                break
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    structures.append(Structure.from_str(row["cif"], fmt="cif"))
            except Exception as exc:  # pymatgen raises many types on broken CIFs
                raise InputFileError(f"{path}: row {row_number + 1}: cannot parse the CIF ({exc})") from exc
            ids.append(str(row.get("material_id", row_number)))
            if property is not None:
                try:
                    values.append(float(row[property]) if row[property].strip() else math.nan)
                except ValueError:
                    raise InputFileError(f"{path}: row {row_number + 1}: {property} = {row[property]!r} is not a "
                                         "number") from None
    if not structures:
        raise InputFileError(f"{path}: no crystals")
    return structures, values, ids
