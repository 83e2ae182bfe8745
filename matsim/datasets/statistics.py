"""Dataset statistics that initialise a potential: per-element reference energies (E0s), force RMS, mean neighbors.

- E0s: from a file of isolated atoms (one atom per frame, its energy under the energy key), or by least squares of
  the total energies against the composition (``E ≈ Σ_Z n_Z E0_Z``), as MACE does. Molecular datasets of a single
  composition (rMD17 ethanol) make that system rank-deficient: ``numpy.linalg.lstsq`` then returns the minimum-norm
  solution, which still removes the mean energy exactly; isolated-atom energies are the better choice there.
- ``energy_scale``: the RMS of the force components (eV/Å), or, without forces, the standard deviation of the
  per-atom energy after E0s are removed.
- ``avg_num_neighbors``: mean number of neighbors within the cutoff (edges / atoms of the training graphs).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from matsim.core.errors import MatsimError

__all__ = [
    "DatasetStatistics",
    "e0s_least_squares",
    "e0s_from_isolated_atoms",
    "force_rms",
    "mean_num_neighbors",
    "normalise_e0s",
    "residual_energy_std",
]


@dataclass
class DatasetStatistics:
    """Statistics of a training set; ``as_dict`` is what a checkpoint stores (JSON-like values only)."""

    atomic_energies: dict[int, float] = field(default_factory=dict)
    e0s_source: str = "least_squares"
    energy_scale: float = 1.0
    energy_scale_source: str = "force_rms"
    avg_num_neighbors: float = 1.0
    cutoff: float = 0.0
    num_structures: int = 0
    num_atoms: int = 0
    species: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["atomic_energies"] = {int(z): float(e) for z, e in self.atomic_energies.items()}
        return out


def normalise_e0s(e0s: Mapping[Any, float]) -> dict[int, float]:
    """{Z: eV} from a mapping keyed by atomic numbers or element symbols ("H", 1, "1")."""
    out: dict[int, float] = {}
    for key, value in e0s.items():
        if isinstance(key, str) and not key.strip().isdigit():
            if key not in atomic_numbers:
                raise MatsimError(f"unknown element {key!r} in the reference energies (E0s)")
            z = atomic_numbers[key]
        else:
            z = int(key)
        out[z] = float(value)
    return out


def e0s_from_isolated_atoms(frames: Sequence[Atoms], energies: Sequence[float], source: str = "isolated atoms") -> dict[int, float]:
    """{Z: E0} from single-atom frames and their energies; several frames of one element must agree."""
    e0s: dict[int, float] = {}
    for index, (atoms, energy) in enumerate(zip(frames, energies)):
        if len(atoms) != 1:
            raise MatsimError(f"{source}: frame {index} has {len(atoms)} atoms; an isolated-atom file holds one atom a frame")
        z = int(atoms.numbers[0])
        if z in e0s and abs(e0s[z] - float(energy)) > 1e-6:
            raise MatsimError(f"{source}: two different energies for isolated {chemical_symbols[z]}: {e0s[z]} and {energy}")
        e0s[z] = float(energy)
    return e0s


def _numbers(frame: Atoms | Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(frame.numbers if isinstance(frame, Atoms) else frame, dtype=np.int64)


def composition_matrix(frames: Sequence[Atoms | np.ndarray], species: Sequence[int]) -> np.ndarray:
    """(frames, species) counts of each element in each frame (frames: ``Atoms`` or arrays of atomic numbers)."""
    column = {int(z): k for k, z in enumerate(species)}
    counts = np.zeros((len(frames), len(species)))
    for row, atoms in enumerate(frames):
        for z, n in zip(*np.unique(_numbers(atoms), return_counts=True)):
            counts[row, column[int(z)]] = n
    return counts


def e0s_least_squares(frames: Sequence[Atoms | np.ndarray], energies: Sequence[float], species: Sequence[int] | None = None) -> dict[int, float]:
    """{Z: E0} minimising Σ_frames (E - Σ_Z n_Z E0_Z)²; the minimum-norm solution when compositions are degenerate."""
    if not frames:
        raise MatsimError("no frames to fit reference energies (E0s) to")
    species = sorted({int(z) for atoms in frames for z in _numbers(atoms)} if species is None else {int(z) for z in species})
    counts = composition_matrix(frames, species)
    energies = np.asarray(energies, dtype=np.float64)
    solution, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    if rank < len(species):
        warnings.warn(
            f"the training compositions determine only {rank} of {len(species)} reference energies; using the "
            "minimum-norm least-squares E0s (give an isolated-atoms file for physical E0s)",
            stacklevel=2,
        )
    return {int(z): float(e) for z, e in zip(species, solution)}


def force_rms(forces: Sequence[np.ndarray]) -> float:
    """Root mean square of all force components, eV/Å."""
    if not len(forces):
        return 0.0
    flat = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in forces])
    return float(np.sqrt(np.mean(flat**2))) if flat.size else 0.0


def residual_energy_std(
    frames: Sequence[Atoms | np.ndarray], energies: Sequence[float], e0s: Mapping[int, float]
) -> float:
    """Standard deviation of the per-atom energy after the E0s are subtracted, eV/atom."""
    per_atom = []
    for atoms, energy in zip(frames, energies):
        numbers = _numbers(atoms)
        per_atom.append((float(energy) - sum(e0s.get(int(z), 0.0) for z in numbers)) / len(numbers))
    return float(np.std(per_atom)) if len(per_atom) > 1 else 0.0


def mean_num_neighbors(num_edges: int, num_atoms: int) -> float:
    """Mean number of neighbors within the cutoff: edges of the (full) neighbor lists per atom."""
    return float(num_edges) / max(int(num_atoms), 1)
