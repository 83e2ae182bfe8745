"""Structure of the liquid: radial distribution functions, coordination numbers, solvation shells.

Units and conventions: see :mod:`matsim.md.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from vesin import NeighborList

from matsim.core.errors import ConfigError
from matsim.md.analysis.statistics import Estimate, block_average


# ---------------------------------------------------------------------------------------------------------- RDF


@dataclass(frozen=True)
class RDF:
    """Radial distribution function g_AB(r) and running coordination number n_AB(r) (B around each A).

    Arrays (n_bins,): r (bin centres, Å), g, g_error, cn, cn_error. Errors are standard errors over frame blocks
    (NaN for fewer than two frames).
    """

    r: np.ndarray
    g: np.ndarray
    g_error: np.ndarray
    cn: np.ndarray
    cn_error: np.ndarray


def _inscribed_radius(cell: np.ndarray) -> float:
    """Half the smallest distance between opposite faces of the cell (Å)."""
    volume = abs(np.linalg.det(cell))
    areas = [np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    return 0.5 * volume / max(areas)


def _pair_distances(positions: np.ndarray, cell: np.ndarray, index_a: np.ndarray, index_b: np.ndarray,
                    r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances (Å) and positions in A and in B (0..len(A)-1, 0..len(B)-1) of all ordered pairs a∈A, b∈B, a≠b
    within ``r_max``, every periodic image included (below half the cell width that is exactly the minimum image)."""
    union, inverse = np.unique(np.concatenate([index_a, index_b]), return_inverse=True)
    pos_a, pos_b = inverse[: len(index_a)], inverse[len(index_a):]
    in_a = np.full(len(union), -1)
    in_a[pos_a] = np.arange(len(index_a))
    in_b = np.full(len(union), -1)
    in_b[pos_b] = np.arange(len(index_b))
    i, j, d = NeighborList(cutoff=r_max, full_list=True).compute(positions[union], cell, True, "ijd")
    keep = (in_a[i] >= 0) & (in_b[j] >= 0)
    return d[keep], in_a[i[keep]], in_b[j[keep]]


def rdf(positions: np.ndarray, cells: np.ndarray, index_a: np.ndarray, index_b: np.ndarray,
        r_max: float | None = None, n_bins: int = 200, n_blocks: int = 5) -> RDF:
    """g_AB(r) averaged over frames, for any (triclinic) periodic cell.

    Args:
        positions: (F, N, 3) Å; cells: (F, 3, 3) Å; index_a, index_b: atom indices of the two sets (may overlap;
            an atom is never paired with itself).
        r_max: largest distance, Å (default: half the smallest cell width of the first frame).
        n_bins: histogram bins on [0, r_max]; n_blocks: frame blocks for the standard errors.

    g is normalised per frame by the ideal-gas pair density (N_A N_B − N_AB)/V; the coordination number is the
    cumulative pair count divided by N_A, so n_AB(r) counts B neighbours within r of an A atom.
    """
    positions, cells = np.asarray(positions, float), np.asarray(cells, float)
    index_a, index_b = np.asarray(index_a, int), np.asarray(index_b, int)
    if len(index_a) == 0 or len(index_b) == 0:
        raise ConfigError("rdf: an atom selection is empty")
    r_max = r_max or _inscribed_radius(cells[0])
    edges = np.linspace(0.0, r_max, n_bins + 1)
    shell = 4.0 / 3.0 * np.pi * np.diff(edges**3)
    n_both = len(np.intersect1d(index_a, index_b))
    g_frames, cn_frames = [], []
    for frame, cell in zip(positions, cells):
        distances, _, _ = _pair_distances(frame, cell, index_a, index_b, r_max)
        counts = np.histogram(distances, bins=edges)[0].astype(float)
        pair_density = (len(index_a) * len(index_b) - n_both) / abs(np.linalg.det(cell))
        g_frames.append(counts / (pair_density * shell))
        cn_frames.append(np.cumsum(counts) / len(index_a))
    g_mean, g_err = _frame_block_mean(np.array(g_frames), n_blocks)
    cn_mean, cn_err = _frame_block_mean(np.array(cn_frames), n_blocks)
    return RDF(0.5 * (edges[1:] + edges[:-1]), g_mean, g_err, cn_mean, cn_err)


def _frame_block_mean(values: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over frames (axis 0) and the standard error over up to ``n_blocks`` contiguous blocks of frames."""
    mean = values.mean(axis=0)
    n_blocks = min(n_blocks, len(values))
    if n_blocks < 2:
        return mean, np.full_like(mean, np.nan)
    blocks = np.array([b.mean(axis=0) for b in np.array_split(values, n_blocks)])
    return mean, blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)


def first_minimum(rdf_result: RDF, smooth: int = 5, min_peak: float = 1.5) -> tuple[float, float]:
    """(r_peak, r_min) in Å: the highest peak of g(r) (for a cation–donor pair, the first shell) and the first
    minimum after it, on g smoothed over ``smooth`` bins.

    The minimum is sought where g, after the peak, first dips below 1 and until it climbs back above 1; a flat
    bottom (an empty gap between shells in a short run) gives the middle of the gap.

    Raises:
        ConfigError: g never exceeds ``min_peak`` (no structured shell), or never dips below 1 after the peak.
    """
    g = np.convolve(rdf_result.g, np.ones(smooth) / smooth, mode="same")
    peak = int(np.argmax(g))
    if g[peak] < min_peak:
        raise ConfigError(f"g(r) has no first peak above {min_peak} (maximum {g[peak]:.2f}): no shell to cut")
    after = g[peak:]
    below = np.flatnonzero(after < 1.0)
    if len(below) == 0:
        raise ConfigError("g(r) does not drop below 1 after its first peak within the range: increase r_max")
    above = np.flatnonzero(after[below[0]:] > 1.0)
    gap = after[below[0]: below[0] + above[0]] if len(above) else after[below[0]:]
    bottom = np.flatnonzero(gap <= gap.min() + 0.02 * (g[peak] - gap.min()))
    run = bottom[: int(np.argmax(np.diff(np.append(bottom, bottom[-1] + 2)) > 1)) + 1]
    return float(rdf_result.r[peak]), float(rdf_result.r[peak + below[0] + int(round(run.mean()))])


# --------------------------------------------------------------------------------------- coordination and solvation


def coordination_numbers(positions: np.ndarray, cells: np.ndarray, index_center: np.ndarray,
                         index_neighbor: np.ndarray, cutoff: float) -> tuple[Estimate, np.ndarray]:
    """Neighbours within ``cutoff`` (Å) of each centre atom.

    Returns:
        The mean coordination number with its block-averaged standard error (over the per-frame means), and the
        counts (F, N_center) per frame and centre.
    """
    index_center = np.asarray(index_center, int)
    counts = np.zeros((len(positions), len(index_center)))
    for f, (frame, cell) in enumerate(zip(np.asarray(positions, float), np.asarray(cells, float))):
        _, centre, _ = _pair_distances(frame, cell, index_center, np.asarray(index_neighbor, int), cutoff)
        counts[f] = np.bincount(centre, minlength=len(index_center))
    return block_average(counts.mean(axis=1)).estimate, counts


@dataclass(frozen=True)
class SolvationShells:
    """First-shell composition around each centre (e.g. Li+).

    Attributes:
        species: species names, in the order of ``per_center`` columns.
        mean_counts: molecules of each species in a shell (mean over centres and frames, block-averaged error).
        per_center: (N_center, n_species) mean molecule counts per centre over frames.
        shell_types: fraction of (centre, frame) samples with each shell composition, e.g. ``"2 EC + 1 DMC + 1 PF6"``.
    """

    species: list[str]
    mean_counts: dict[str, Estimate]
    per_center: np.ndarray
    shell_types: dict[str, float]


def solvation_shells(positions: np.ndarray, cells: np.ndarray, index_center: np.ndarray,
                     donors: dict[str, tuple[np.ndarray, float]], mol_id: np.ndarray,
                     mol_labels: Sequence[str]) -> SolvationShells:
    """Which molecules and anions sit in the first shell of each centre atom.

    A molecule is in the shell when any of its donor atoms lies within that donor's cutoff (Å) of the centre.

    Args:
        positions: (F, N, 3) Å; cells: (F, 3, 3) Å; index_center: centre atom indices (e.g. Li).
        donors: label -> (atom indices, cutoff in Å), e.g. ``{"O": (oxygens, 2.7), "F": (fluorines, 2.4)}``.
        mol_id: (N,) molecule index per atom; mol_labels: (M,) species name per molecule.
    """
    index_center = np.asarray(index_center, int)
    labels = np.asarray(mol_labels)
    species = sorted(set(labels.tolist()))
    column = {name: k for k, name in enumerate(species)}
    mol_column = np.array([column[name] for name in labels])
    n_frames, n_center = len(positions), len(index_center)
    counts = np.zeros((n_frames, n_center, len(species)))
    for f, (frame, cell) in enumerate(zip(np.asarray(positions, float), np.asarray(cells, float))):
        members = _shell_members(frame, cell, index_center, donors, mol_id)
        for centre, molecule in members:
            counts[f, centre, mol_column[molecule]] += 1
    mean_counts = {name: block_average(counts[:, :, k].mean(axis=1)).estimate for name, k in column.items()}
    return SolvationShells(species, mean_counts, counts.mean(axis=0), _shell_type_fractions(counts, species))


def _shell_members(frame: np.ndarray, cell: np.ndarray, index_center: np.ndarray,
                   donors: dict[str, tuple[np.ndarray, float]], mol_id: np.ndarray) -> np.ndarray:
    """Unique (centre, molecule) pairs (K, 2) of one frame."""
    pairs = [np.zeros((0, 2), dtype=int)]
    for indices, cutoff in donors.values():
        indices = np.asarray(indices, int)
        _, centre, donor = _pair_distances(frame, cell, index_center, indices, cutoff)
        pairs.append(np.stack([centre, mol_id[indices[donor]]], axis=1))
    pairs = np.concatenate(pairs)
    pairs = pairs[pairs[:, 1] != mol_id[index_center][pairs[:, 0]]]
    return np.unique(pairs, axis=0)


def _shell_type_fractions(counts: np.ndarray, species: list[str]) -> dict[str, float]:
    flat = counts.reshape(-1, len(species)).astype(int)
    kinds, occurrences = np.unique(flat, axis=0, return_counts=True)
    out = {}
    for kind, n in sorted(zip(kinds.tolist(), occurrences.tolist()), key=lambda item: -item[1]):
        label = " + ".join(f"{c} {name}" for c, name in zip(kind, species) if c) or "empty"
        out[label] = n / len(flat)
    return out
