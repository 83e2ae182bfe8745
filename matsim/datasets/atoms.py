"""Reading labelled frames: extxyz and ASE databases, with configurable keys for every target.

A frame's targets are looked up by name, in this order:

1. ``atoms.info[key]`` (per-structure values in the extxyz comment line, or an ASE db row's key-value pairs / data);
2. ``atoms.arrays[key]`` (per-atom columns of the extxyz ``Properties``, or per-atom arrays in an ASE db row's data);
3. ``atoms.calc.results[key]`` — ASE's calculator results. ASE's extxyz reader moves the standard names
   (``energy``, ``forces``, ``stress``, ``virial``, ``charges``, ``dipole``, ...) into a SinglePointCalculator,
   and ASE databases store them there too, so the default keys work for both.

A target the training needs but a frame lacks is a :class:`~matsim.core.errors.MatsimError` that names the key,
the file and the frame index, unless ``DataKeys.missing_targets`` is ``skip`` (mixed data, e.g. periodic boxes with
stress and gas-phase clusters without): the frame then carries no label for that target and contributes nothing to
its loss term (:mod:`matsim.datasets.graphs`, :mod:`matsim.train.losses`). Units are ASE's: eV, eV/Å, eV/Å³ (stress, ASE sign), e, e·Å. A virial (eV) becomes
a stress through ``stress = -virial / volume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from ase import Atoms
from pydantic import ConfigDict

from matsim.core.config import StrictModel
from matsim.core.errors import InputFileError, MatsimError

__all__ = ["DataKeys", "TARGETS", "read_frames", "frame_targets", "MissingKeyError"]

#: Targets a frame can carry, in a fixed order.
TARGETS: tuple[str, ...] = ("energy", "forces", "stress", "charges", "dipole")

_DB_SUFFIXES = {".db", ".json", ".aselmdb"}
_XYZ_SUFFIXES = {".xyz", ".extxyz"}


class MissingKeyError(MatsimError, KeyError):
    """A frame lacks a key the task needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataKeys(StrictModel):
    """Names under which each target is stored in the data files (``energy_xtb``, ``REF_forces``, ...).

    ``stress`` is tried first; when a frame has no stress but has ``virial``, the stress is -virial / volume.

    ``missing_targets`` says what a frame without a needed target means: ``error`` (default: a
    :class:`MissingKeyError` naming key, file and frame) or ``skip`` (the frame has no label for that target; it is
    left out of that loss term). It lives here, beside the key names, because it is part of how a file is read: the
    datasets' cache key and the frozen ``data.keys`` section of a resumed training run include it.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    charges: str = "charges"
    dipole: str = "dipole"
    missing_targets: Literal["error", "skip"] = "error"

    model_config = ConfigDict(frozen=True)

    def as_dict(self) -> dict[str, str]:
        return self.model_dump()


def read_frames(path: str | Path, index: str | int | slice = ":") -> list[Atoms]:
    """All frames of an extxyz file or an ASE database (other formats through ``ase.io.read``).

    ASE database rows become ``Atoms`` with their calculator results; their key-value pairs go to ``atoms.info``
    and their ``data`` to ``atoms.arrays`` (per-atom arrays) or ``atoms.info`` (anything else).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in _DB_SUFFIXES and _is_ase_db(path):
            frames = _read_ase_db(path)
            if isinstance(index, int):
                return [frames[index]]
            return frames if index == ":" else frames[_as_slice(index)]
        import ase.io

        fmt = "extxyz" if suffix in _XYZ_SUFFIXES else None
        frames = ase.io.read(path, index=index, format=fmt)
    except MatsimError:
        raise
    except Exception as exc:  # ASE raises many exception types for malformed files
        raise InputFileError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise InputFileError(f"{path} holds no frames")
    return frames


def _as_slice(index: str | slice) -> slice:
    if isinstance(index, slice):
        return index
    parts = [int(p) if p.strip() else None for p in str(index).split(":")]
    return slice(*parts)


def _is_ase_db(path: Path) -> bool:
    """``.db``/``.aselmdb`` are ASE databases; a ``.json`` file is one when it has ASE's ``"ids"`` index."""
    if path.suffix.lower() != ".json":
        return True
    return '"ids"' in path.read_text(errors="replace")


def _read_ase_db(path: Path) -> list[Atoms]:
    import ase.db

    frames = []
    with ase.db.connect(str(path)) as db:
        for row in db.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            for key, value in (row.get("data") or {}).items():
                array = np.asarray(value)
                if array.ndim >= 1 and array.shape[0] == len(atoms) and key not in ("numbers", "positions"):
                    atoms.arrays[key] = array
                else:
                    atoms.info[key] = value
            frames.append(atoms)
    return frames


def _lookup(atoms: Atoms, key: str) -> Any | None:
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays and key not in ("numbers", "positions"):
        return atoms.arrays[key]
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and key in results:
        return results[key]
    return None


def frame_targets(
    atoms: Atoms,
    keys: DataKeys,
    required: Iterable[str] = ("energy", "forces"),
    optional: Iterable[str] = (),
    source: str | Path = "<frames>",
    index: int = 0,
) -> dict[str, np.ndarray]:
    """The targets of one frame as float64 arrays: energy (), forces (N, 3), stress (3, 3), charges (N,), dipole (3,).

    Args:
        required: targets that must be present (a :class:`MissingKeyError` names key, file and frame otherwise).
        optional: targets read when present.
        source, index: the file and frame index, for error messages.
    """
    required = list(required)
    wanted = required + [t for t in optional if t not in required]
    n = len(atoms)
    out: dict[str, np.ndarray] = {}
    for target in wanted:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
        key = getattr(keys, target)
        value = _lookup(atoms, key)
        if target == "stress" and value is None:
            virial = _lookup(atoms, keys.virial)
            if virial is not None:
                volume = abs(float(np.linalg.det(atoms.cell.array)))
                if volume <= 0:
                    raise MatsimError(f"{source}: frame {index}: virial '{keys.virial}' given for a frame without a cell")
                value = -_as_3x3(virial, keys.virial, source, index) / volume
        if value is None:
            if target in required:
                also = f" or '{keys.virial}'" if target == "stress" else ""
                raise MissingKeyError(
                    f"{source}: frame {index} has no {target} under key '{key}'{also} "
                    f"(found info keys: {sorted(atoms.info)}, per-atom arrays: "
                    f"{sorted(k for k in atoms.arrays if k not in ('numbers', 'positions'))}, calculator results: "
                    f"{sorted(getattr(atoms.calc, 'results', {}) or {})}); set the key in the config (data.keys.{target})"
                )
            continue
        try:
            out[target] = _convert(target, value, n, key, source, index)
        except (TypeError, ValueError) as exc:
            raise MatsimError(f"{source}: frame {index}: {target} under key '{key}' is unusable: {exc}") from exc
    return out


def _convert(target: str, value: Any, n: int, key: str, source: Any, index: int) -> np.ndarray:
    if target == "energy":
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.size != 1:
            raise ValueError(f"expected one number, got shape {np.shape(value)}")
        return array.reshape(())
    if target == "stress":
        return _as_3x3(value, key, source, index)
    shapes = {"forces": (n, 3), "charges": (n,), "dipole": (3,)}
    array = np.asarray(value, dtype=np.float64)
    if array.size != int(np.prod(shapes[target])):
        raise ValueError(f"expected shape {shapes[target]}, got {array.shape}")
    return array.reshape(shapes[target])


def _as_3x3(value: Any, key: str, source: Any, index: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 9:
        return array.reshape(3, 3)
    if array.size == 6:  # Voigt order xx, yy, zz, yz, xz, xy
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise MatsimError(f"{source}: frame {index}: '{key}' must have 6 (Voigt) or 9 values, got {array.size}")


def check_keys_present(frames: Sequence[Atoms], keys: DataKeys, required: Iterable[str], source: str | Path) -> None:
    """Raise a :class:`MissingKeyError` for the first frame that lacks a required target."""
    for index, atoms in enumerate(frames):
        frame_targets(atoms, keys, required=required, source=source, index=index)
