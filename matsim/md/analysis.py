"""Analysis of electrolyte MD: density, RDF and coordination, Li+ solvation, diffusion, conductivity, viscosity.

The functions below are pure numpy/scipy on arrays; every physical value comes with a standard error.
Conventions: positions (F, N, 3) in Å for F frames and N atoms (or molecules); cells (F, 3, 3) with cell vectors as
rows in Å; time in fs (``dt_fs`` is the time between stored frames); stress (F, 3, 3) or Voigt (F, 6) in eV/Å³;
temperature in K; volume in Å³.

Uncertainties: time series use Flyvbjerg–Petersen block averaging (J. Chem. Phys. 91, 461 (1989)). Diffusion
coefficients, conductivities and viscosities take their value from the whole trajectory (all time origins) and their
standard error from the spread of the same estimate over ``n_blocks`` contiguous blocks of it.

kinisi 2.1 (Bayesian MSD regression with the MSD covariance) installs here but was left out: it pulls scipp, dynesty,
emcee, statsmodels and scikit-learn, wants its own parser objects, and its sampling costs seconds to minutes per
species; the block estimate is cheap and transparent, and kinisi remains a candidate benchmark peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import ase.io
import numpy as np
from ase import Atoms
from pydantic import Field, PositiveFloat, PositiveInt
from vesin import NeighborList

from matsim.core.config import StrictModel
from matsim.core.errors import ConfigError, InputFileError
from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3, ELEMENTARY_CHARGE_C, EV_PER_A3_TO_GPA, KB_EV_PER_K
from matsim.md.builder import prepare_atoms
from matsim.md.species import molecular_formula, species_by_formula

__all__ = [
    "Estimate",
    "BlockAverage",
    "block_average",
    "RDF",
    "rdf",
    "first_minimum",
    "coordination_numbers",
    "solvation_shells",
    "unwrap_positions",
    "molecule_centres",
    "mean_squared_displacement",
    "EinsteinFit",
    "SolvationShells",
    "diffusion_coefficient",
    "nernst_einstein_conductivity",
    "einstein_conductivity",
    "GreenKubo",
    "green_kubo_viscosity",
    "AnalysisConfig",
    "TrajectoryAnalysis",
    "analyze_trajectory",
    "trajectory_summary",
    "select_atoms",
    "A2_PER_FS_TO_CM2_PER_S",
    "S_PER_M_TO_MS_PER_CM",
]

#: Multiply a diffusion coefficient in Å²/fs by this to get cm²/s.
A2_PER_FS_TO_CM2_PER_S = 1e-16 / 1e-15
#: Multiply a conductivity in S/m by this to get mS/cm.
S_PER_M_TO_MS_PER_CM = 10.0
#: Multiply a viscosity in eV·fs/Å³ by this to get mPa·s.
EV_FS_PER_A3_TO_MPA_S = ELEMENTARY_CHARGE_C / 1e-30 * 1e-15 * 1e3


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error (same units)."""

    value: float
    error: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "error": _finite(self.error)}


def _finite(x: float) -> float | None:
    """JSON has no NaN: map non-finite numbers to None."""
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class BlockAverage:
    """Flyvbjerg–Petersen blocking of a time series.

    Attributes:
        mean: the series mean; error: standard error of the mean at the chosen blocking level.
        block_sizes, errors, error_errors: (L,) per blocking level, the block size (samples), the standard-error
            estimate and its own uncertainty. level: the chosen level. converged: a plateau was found before the
            coarsest level (if False, ``error`` is a lower bound).
    """

    mean: float
    error: float
    level: int
    converged: bool
    block_sizes: np.ndarray
    errors: np.ndarray
    error_errors: np.ndarray

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.mean, self.error)


def block_average(series: Sequence[float] | np.ndarray, min_blocks: int = 4) -> BlockAverage:
    """Mean of a correlated series (T,) with its Flyvbjerg–Petersen standard error.

    The series is halved repeatedly by averaging neighbours while at least ``min_blocks`` blocks remain. The chosen
    level is the first whose error estimate is not exceeded, beyond two combined error bars, by any coarser level.
    """
    x = np.asarray(series, dtype=float).ravel()
    if len(x) < 2:
        return BlockAverage(float(np.mean(x)) if len(x) else np.nan, np.nan, 0, False,
                            np.array([1]), np.array([np.nan]), np.array([np.nan]))
    sizes, errors, error_errors = [], [], []
    size = 1
    while len(x) >= min_blocks:
        n = len(x)
        sem = np.sqrt(np.var(x) / (n - 1))
        sizes.append(size)
        errors.append(sem)
        error_errors.append(sem / np.sqrt(2.0 * (n - 1)))
        x = 0.5 * (x[: n // 2 * 2 : 2] + x[1 : n // 2 * 2 : 2])
        size *= 2
    errors_a, error_errors_a = np.array(errors), np.array(error_errors)
    level = _plateau_level(errors_a, error_errors_a)
    return BlockAverage(float(np.mean(series)), float(errors_a[level]), level, level < len(errors_a) - 1,
                        np.array(sizes), errors_a, error_errors_a)


def _plateau_level(errors: np.ndarray, error_errors: np.ndarray) -> int:
    for k in range(len(errors)):
        later = slice(k + 1, None)
        if np.all(errors[later] - errors[k] <= 2.0 * np.hypot(error_errors[later], error_errors[k])):
            return k
    return len(errors) - 1


def _time_blocks(n_frames: int, n_blocks: int, min_frames: int) -> list[slice]:
    """``n_blocks`` contiguous frame slices of equal length; ConfigError if a block would be shorter than
    ``min_frames``."""
    length = n_frames // n_blocks
    if length < min_frames:
        raise ConfigError(f"{n_blocks} blocks of {n_frames} frames are {length} frames each; the analysis window "
                          f"needs at least {min_frames}: use fewer blocks, a shorter window or a longer trajectory")
    return [slice(b * length, (b + 1) * length) for b in range(n_blocks)]


def _standard_error(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.nan


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


# --------------------------------------------------------------------------------------------- MSD and diffusion


def unwrap_positions(positions: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Unwrapped trajectory (F, N, 3) in Å from wrapped positions (F, N, 3) and cells (F, 3, 3).

    Each frame-to-frame displacement is reduced to its minimum image in the later frame's cell and accumulated
    (the "TOR" scheme, valid with a fluctuating NPT cell: von Bülow et al., J. Chem. Phys. 153, 021101 (2020)).
    Frames must be close enough that no atom moves half a cell width between them.
    """
    positions, cells = np.asarray(positions, float), np.asarray(cells, float)
    steps = np.diff(positions, axis=0)
    frac = np.einsum("tnj,tjk->tnk", steps, np.linalg.inv(cells[1:]))
    steps = np.einsum("tnj,tjk->tnk", frac - np.round(frac), cells[1:])
    return np.concatenate([positions[:1], positions[:1] + np.cumsum(steps, axis=0)])


def molecule_centres(positions: np.ndarray, cells: np.ndarray, masses: np.ndarray, mol_id: np.ndarray) -> np.ndarray:
    """Centres of mass (F, M, 3) in Å of the M molecules, from unwrapped positions (F, N, 3).

    Molecules split across the boundary in the first frame are made whole (each atom's minimum image relative to
    its molecule's first atom), and the same image shift is applied to every frame.
    """
    from scipy.sparse import csr_matrix

    positions, cells = np.asarray(positions, float), np.asarray(cells, float)
    mol_id, masses = np.asarray(mol_id, int), np.asarray(masses, float)
    first_atom = np.unique(mol_id, return_index=True)[1][mol_id]
    frac = (positions[0] - positions[0][first_atom]) @ np.linalg.inv(cells[0])
    image = -np.round(frac)
    whole = positions + np.einsum("nj,tjk->tnk", image, cells)
    n_mol = int(mol_id.max()) + 1
    total = np.bincount(mol_id, weights=masses, minlength=n_mol)
    weights = csr_matrix((masses / total[mol_id], (mol_id, np.arange(len(mol_id)))), shape=(n_mol, len(mol_id)))
    flat = whole.transpose(1, 0, 2).reshape(len(mol_id), -1)
    return np.asarray(weights @ flat).reshape(n_mol, len(positions), 3).transpose(1, 0, 2)


def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """Unbiased autocorrelation over all time origins of x (T, K): C(m) = Σ_t x_t·x_{t+m} / (T − m), shape (T, K)."""
    n = x.shape[0]
    spectrum = np.fft.rfft(x, n=2 * n, axis=0)
    corr = np.fft.irfft(spectrum * spectrum.conj(), n=2 * n, axis=0)[:n]
    return corr / (n - np.arange(n))[:, None]


def mean_squared_displacement(positions: np.ndarray) -> np.ndarray:
    """MSD (F,) in Å² at lags 0..F-1 frames of unwrapped positions (F, M, 3), averaged over the M particles and all
    time origins (FFT algorithm, O(F log F))."""
    x = np.asarray(positions, float)
    n = x.shape[0]
    r2 = np.sum(x**2, axis=2)
    cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(r2, axis=0)])
    lags = np.arange(n)
    s1 = (cumulative[n - lags] + cumulative[n] - cumulative[lags]) / (n - lags)[:, None]
    s2 = sum(_autocorrelation(x[:, :, k]) for k in range(3))
    return np.mean(s1 - 2.0 * s2, axis=1)


@dataclass(frozen=True)
class EinsteinFit:
    """A linear fit MSD(t) ≈ 6 D t + c in the window ``window_fs``.

    Attributes:
        value: D = slope / 6 in Å²/fs (for a collective displacement, that of the summed vector), with the
            standard error over trajectory blocks. window_fs: (t_start, t_end) fit window, fs.
        time_fs, msd, msd_error: (L,) lags up to one block length, the whole-trajectory MSD (Å²) and its block
            standard error. intercept: c in Å². block_values: D of each block, Å²/fs.
    """

    value: Estimate
    window_fs: tuple[float, float]
    time_fs: np.ndarray
    msd: np.ndarray
    msd_error: np.ndarray
    intercept: float
    block_values: np.ndarray = field(repr=False)


def diffusion_coefficient(positions: np.ndarray, dt_fs: float, fit_window_fs: tuple[float, float] | None = None,
                          n_blocks: int = 5) -> EinsteinFit:
    """Self-diffusion coefficient (Å²/fs; × :data:`A2_PER_FS_TO_CM2_PER_S` for cm²/s) of unwrapped positions
    (F, M, 3) sampled every ``dt_fs`` fs.

    The fit window (fs) defaults to 10–50 % of one block; it must fit inside one block of F // n_blocks frames.
    The value comes from the whole-trajectory MSD, the error from the spread of the n_blocks block fits.
    """
    positions = np.asarray(positions, float)
    n_frames = positions.shape[0]
    block_frames = n_frames // max(n_blocks, 1)
    if fit_window_fs is None:
        fit_window_fs = (0.1 * (block_frames - 1) * dt_fs, 0.5 * (block_frames - 1) * dt_fs)
    first, last = int(np.ceil(fit_window_fs[0] / dt_fs)), int(np.floor(fit_window_fs[1] / dt_fs))
    if last - first < 2:
        raise ConfigError(f"MSD fit window {fit_window_fs} fs holds fewer than 3 frames at {dt_fs} fs per frame")
    blocks = _time_blocks(n_frames, n_blocks, last + 1)
    fit = slice(first, last + 1)
    time = np.arange(block_frames) * dt_fs
    block_msd = np.array([mean_squared_displacement(positions[b])[:block_frames] for b in blocks])
    block_d = np.array([np.polyfit(time[fit], m[fit], 1)[0] / 6.0 for m in block_msd])
    msd = mean_squared_displacement(positions)[:block_frames]
    slope, intercept = np.polyfit(time[fit], msd[fit], 1)
    msd_error = block_msd.std(axis=0, ddof=1) / np.sqrt(len(blocks)) if len(blocks) > 1 else np.full_like(msd, np.nan)
    return EinsteinFit(Estimate(float(slope / 6.0), _standard_error(block_d)), (first * dt_fs, last * dt_fs),
                       time, msd, msd_error, float(intercept), block_d)


# ------------------------------------------------------------------------------------------------- conductivity


def _conductivity_mS_cm(sum_z2_d: float, volume: float, temperature: float) -> float:
    """σ = e² Σ z² D / (V k_B T) in mS/cm, from Σ z² D in Å²/fs, V in Å³ and T in K."""
    siemens_per_m = ELEMENTARY_CHARGE_C * sum_z2_d * 1e-5 / (volume * 1e-30 * KB_EV_PER_K * temperature)
    return siemens_per_m * S_PER_M_TO_MS_PER_CM


def nernst_einstein_conductivity(diffusion: Sequence[Estimate], counts: Sequence[int], charges: Sequence[int],
                                 volume: float, temperature: float) -> Estimate:
    """Nernst–Einstein conductivity σ_NE = e²/(V k_B T) Σ_k N_k z_k² D_k in mS/cm (ion correlations neglected).

    Args:
        diffusion: D_k of each ionic species in Å²/fs with errors; counts: N_k; charges: z_k in e.
        volume: Å³; temperature: K. The error propagates the D errors as independent.
    """
    weights = np.array(counts, float) * np.array(charges, float) ** 2
    value = _conductivity_mS_cm(float(np.sum(weights * [d.value for d in diffusion])), volume, temperature)
    error = _conductivity_mS_cm(float(np.sqrt(np.sum((weights * [d.error for d in diffusion]) ** 2))), volume,
                                temperature)
    return Estimate(value, error)


def einstein_conductivity(positions: np.ndarray, charges: Sequence[float], dt_fs: float, volume: float,
                          temperature: float, fit_window_fs: tuple[float, float] | None = None,
                          n_blocks: int = 5) -> tuple[Estimate, EinsteinFit]:
    """Collective Einstein conductivity σ = e²/(6 V k_B T) d/dt ⟨|Σ_i z_i Δr_i(t)|²⟩ in mS/cm.

    Args:
        positions: (F, M, 3) unwrapped centres of the charged molecules (Å); charges: (M,) their charges in e.
        dt_fs, fit_window_fs, n_blocks: as in :func:`diffusion_coefficient`; volume: Å³; temperature: K.

    Returns:
        σ with its block standard error, and the fit of the charge-displacement MSD (its value in e²·Å²/fs).
    """
    displacement = np.einsum("fmk,m->fk", np.asarray(positions, float), np.asarray(charges, float))[:, None, :]
    fit = diffusion_coefficient(displacement, dt_fs, fit_window_fs, n_blocks)
    sigma = Estimate(_conductivity_mS_cm(fit.value.value, volume, temperature),
                     _conductivity_mS_cm(fit.value.error, volume, temperature))
    return sigma, fit


# ---------------------------------------------------------------------------------------------------- viscosity


@dataclass(frozen=True)
class GreenKubo:
    """Green–Kubo shear viscosity.

    Attributes:
        value: plateau viscosity in mPa·s with its block standard error; window_fs: the plateau window (fs).
        time_fs, running, running_error: (L,) lags, the running integral η(t) in mPa·s and its block error.
        acf: (L,) stress autocorrelation averaged over the components, (eV/Å³)².
    """

    value: Estimate
    window_fs: tuple[float, float]
    time_fs: np.ndarray
    running: np.ndarray
    running_error: np.ndarray
    acf: np.ndarray


def _shear_components(stress: np.ndarray) -> np.ndarray:
    """Five equivalent shear stresses (F, 5) of an isotropic fluid: xy, xz, yz, (xx−yy)/2, (yy−zz)/2 (Daivis & Evans,
    J. Chem. Phys. 100, 541 (1994)); stress (F, 3, 3) or Voigt (F, 6) ordered xx, yy, zz, yz, xz, xy."""
    stress = np.asarray(stress, float)
    if stress.ndim == 2 and stress.shape[1] == 6:
        xx, yy, zz, yz, xz, xy = stress.T
    elif stress.ndim == 3 and stress.shape[1:] == (3, 3):
        xx, yy, zz = stress[:, 0, 0], stress[:, 1, 1], stress[:, 2, 2]
        yz, xz, xy = stress[:, 1, 2], stress[:, 0, 2], stress[:, 0, 1]
    else:
        raise ConfigError(f"stress must have shape (F, 6) or (F, 3, 3), got {stress.shape}")
    return np.stack([xy, xz, yz, 0.5 * (xx - yy), 0.5 * (yy - zz)], axis=1)


def _running_integral(shear: np.ndarray, n_lags: int, dt_fs: float, prefactor: float) -> tuple[np.ndarray, np.ndarray]:
    acf = _autocorrelation(shear - shear.mean(axis=0))[:n_lags].mean(axis=1)
    running = np.concatenate([[0.0], np.cumsum(0.5 * (acf[1:] + acf[:-1]) * dt_fs)])
    return acf, prefactor * running


def green_kubo_viscosity(stress: np.ndarray, dt_fs: float, volume: float, temperature: float,
                         max_lag_fs: float | None = None, plateau_fs: tuple[float, float] | None = None,
                         n_blocks: int = 5) -> GreenKubo:
    """Shear viscosity η = V/(k_B T) ∫₀^∞ ⟨P_αβ(0) P_αβ(t)⟩ dt in mPa·s from a stress series.

    Args:
        stress: (F, 3, 3) or Voigt (F, 6) in eV/Å³ every ``dt_fs`` fs (ASE's sign; the sign cancels).
        volume: Å³ (mean over the run); temperature: K.
        max_lag_fs: longest lag of the running integral (default half a block of F // n_blocks frames).
        plateau_fs: window in which the running integral is averaged (default the second half of the lags).

    The autocorrelation is averaged over the five equivalent shear components; the value comes from the whole
    series and the error from the spread of the plateau over ``n_blocks`` blocks.
    """
    shear = _shear_components(stress)
    block_frames = len(shear) // max(n_blocks, 1)
    n_lags = int(max_lag_fs / dt_fs) + 1 if max_lag_fs is not None else block_frames // 2
    plateau_fs = plateau_fs or (0.5 * (n_lags - 1) * dt_fs, (n_lags - 1) * dt_fs)
    first, last = int(np.ceil(plateau_fs[0] / dt_fs)), int(np.floor(plateau_fs[1] / dt_fs))
    if last >= n_lags or last < first:
        raise ConfigError(f"viscosity plateau window {plateau_fs} fs must lie inside the lags "
                          f"0–{(n_lags - 1) * dt_fs} fs")
    blocks = _time_blocks(len(shear), n_blocks, 2 * n_lags)
    prefactor = volume / (KB_EV_PER_K * temperature) * EV_FS_PER_A3_TO_MPA_S
    acf, running = _running_integral(shear, n_lags, dt_fs, prefactor)
    block_running = np.array([_running_integral(shear[b], n_lags, dt_fs, prefactor)[1] for b in blocks])
    window = slice(first, last + 1)
    value = Estimate(float(running[window].mean()), _standard_error(block_running[:, window].mean(axis=1)))
    running_error = block_running.std(axis=0, ddof=1) / np.sqrt(len(blocks))
    return GreenKubo(value, (first * dt_fs, last * dt_fs), np.arange(n_lags) * dt_fs, running, running_error, acf)


# ------------------------------------------------------------------------------------------- whole trajectories

#: Cations whose first shell is analysed, and the donor elements looked for around them.
_SHELL_CATIONS = ("Li", "Na", "K", "Mg")
_DONORS = ("O", "F", "N")


class AnalysisOptions(StrictModel):
    """Options of :func:`analyze_trajectory` (all but the frame interval). Times in fs, distances in Å, temperature in K.

    ``rdf_pairs`` are selector pairs: an element (``"Li"``) or species:element (``"EC:O"``, the O atoms of EC);
    by default each shell cation present (Li, Na, K, Mg) with each of O, F, N present.
    """

    temperature: PositiveFloat | None = Field(default=None, description="K; default: mean kinetic temperature")
    skip_fs: float = Field(default=0.0, ge=0.0, description="equilibration time dropped from the start")
    n_blocks: int = Field(default=5, ge=2)
    rdf_pairs: list[tuple[str, str]] | None = None
    rdf_r_max: PositiveFloat | None = None
    rdf_bins: PositiveInt = 200
    rdf_max_frames: PositiveInt = 100
    msd_fit_window_fs: tuple[float, float] | None = None
    viscosity_max_lag_fs: PositiveFloat | None = None
    viscosity_plateau_fs: tuple[float, float] | None = None


class AnalysisConfig(AnalysisOptions):
    """Settings of :func:`analyze_trajectory`: the options plus the time between frames (fs)."""

    frame_interval_fs: PositiveFloat


@dataclass
class TrajectoryAnalysis:
    """Everything :func:`analyze_trajectory` computed; :meth:`to_dict` gives the JSON summary.

    ``thermo`` maps ``time_fs``, ``density_g_cm3`` and, where the frames carry them, ``temperature_K``,
    ``pressure_GPa`` and ``energy_eV`` to (F,) arrays.
    """

    n_frames: int
    frame_interval_fs: float
    temperature: float
    volume: float
    composition: dict[str, int]
    thermo: dict[str, np.ndarray]
    thermo_means: dict[str, Estimate]
    rdfs: dict[str, RDF] = field(default_factory=dict)
    shell_cutoffs: dict[str, float] = field(default_factory=dict)
    coordination: dict[str, Estimate] = field(default_factory=dict)
    shells: dict[str, SolvationShells] = field(default_factory=dict)
    diffusion: dict[str, EinsteinFit] = field(default_factory=dict)
    conductivity: dict[str, Estimate] = field(default_factory=dict)
    charge_msd: EinsteinFit | None = None
    viscosity: GreenKubo | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable summary (non-finite numbers become None)."""
        out: dict = {
            "n_frames": self.n_frames,
            "frame_interval_fs": self.frame_interval_fs,
            "temperature_K": self.temperature,
            "volume_A3": self.volume,
            "composition": self.composition,
            "thermo": {k: v.to_dict() for k, v in self.thermo_means.items()},
            "rdf": {k: {"first_peak_A": _rdf_peak(v), "shell_cutoff_A": self.shell_cutoffs.get(k)}
                    for k, v in self.rdfs.items()},
            "coordination_number": {k: v.to_dict() for k, v in self.coordination.items()},
            "solvation_shells": {k: {"mean_counts": {s: e.to_dict() for s, e in v.mean_counts.items()},
                                     "shell_types": v.shell_types} for k, v in self.shells.items()},
            "diffusion_cm2_s": {k: {**_scaled(v.value, A2_PER_FS_TO_CM2_PER_S).to_dict(),
                                    "fit_window_fs": list(v.window_fs)} for k, v in self.diffusion.items()},
            "conductivity_mS_cm": {k: v.to_dict() for k, v in self.conductivity.items()},
        }
        if self.charge_msd is not None:
            out["conductivity_fit_window_fs"] = list(self.charge_msd.window_fs)
        if self.viscosity is not None:
            out["viscosity_mPa_s"] = {**self.viscosity.value.to_dict(), "plateau_fs": list(self.viscosity.window_fs)}
        return out


def _scaled(estimate: Estimate, factor: float) -> Estimate:
    return Estimate(estimate.value * factor, estimate.error * factor)


def _rdf_peak(result: RDF) -> float:
    return float(result.r[int(np.argmax(result.g))])


def _load_frames(trajectory: Sequence[Atoms] | str | Path) -> list[Atoms]:
    if isinstance(trajectory, (str, Path)):
        path = Path(trajectory)
        if not path.is_file():
            raise InputFileError(f"trajectory file not found: {path}")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as exc:
            raise InputFileError(f"cannot read trajectory {path}: {exc}") from exc
    else:
        frames = list(trajectory)
    if len(frames) < 2:
        raise InputFileError("a trajectory needs at least two frames")
    return frames


def _molecule_labels(atoms: Atoms) -> np.ndarray:
    """Species name per molecule (M,): the frame's ``species_formulas``, else the library, else the formula."""
    named = {formula: species.name for formula, species in species_by_formula().items()}
    named.update({formula: name for name, formula in atoms.info.get("species_formulas", {}).items()})
    symbols = np.array(atoms.get_chemical_symbols())
    mol_id = atoms.arrays["mol_id"]
    formulas = [molecular_formula(symbols[mol_id == m].tolist()) for m in range(int(mol_id.max()) + 1)]
    return np.array([named.get(f, f) for f in formulas])


def select_atoms(symbols: np.ndarray, atom_labels: np.ndarray, selector: str) -> np.ndarray:
    """Indices of atoms matching ``"El"`` or ``"Species:El"``; ConfigError if none match."""
    species, _, element = selector.rpartition(":")
    mask = symbols == element
    if species:
        mask &= atom_labels == species
    if not mask.any():
        raise ConfigError(f"atom selection {selector!r} matches no atom (use 'El' or 'Species:El', e.g. 'EC:O')")
    return np.flatnonzero(mask)


def _thermo(frames: list[Atoms], dt_fs: float) -> dict[str, np.ndarray]:
    masses = frames[0].get_masses().sum()
    volumes = np.array([a.get_volume() for a in frames])
    thermo = {"time_fs": np.arange(len(frames)) * dt_fs, "density_g_cm3": masses / volumes * AMU_PER_A3_TO_G_PER_CM3}
    if all(a.has("momenta") for a in frames):
        thermo["temperature_K"] = np.array([a.get_temperature() for a in frames])
    if all(_has_result(a, "stress") for a in frames):
        thermo["pressure_GPa"] = np.array([-np.trace(_stress(a)) / 3.0 for a in frames]) * EV_PER_A3_TO_GPA
    if all(_has_result(a, "energy") for a in frames):
        thermo["energy_eV"] = np.array([a.get_potential_energy() for a in frames])
    return thermo


def _has_result(atoms: Atoms, name: str) -> bool:
    return atoms.calc is not None and name in getattr(atoms.calc, "results", {})


def _stress(atoms: Atoms) -> np.ndarray:
    """Full stress (3, 3) in eV/Å³ including the kinetic (ideal-gas) part where momenta are present."""
    return atoms.get_stress(voigt=False, include_ideal_gas=atoms.has("momenta"))


def analyze_trajectory(trajectory: Sequence[Atoms] | str | Path, config: AnalysisConfig) -> TrajectoryAnalysis:
    """Analyse an electrolyte trajectory: thermo means, RDFs and cation shells, D per species, conductivity
    (Nernst–Einstein and Einstein) and, when every frame has a stress, the Green–Kubo viscosity.

    Args:
        trajectory: frames (list of ase.Atoms) or a path ASE reads (extxyz, traj); frames must keep their atom
            order, and should carry ``mol_id``/``formal_charge`` (else they are derived from the first frame).
        config: see :class:`AnalysisConfig`.
    """
    frames = _load_frames(trajectory)[int(round(config.skip_fs / config.frame_interval_fs)):]
    if len(frames) < 2 * config.n_blocks:
        raise ConfigError(f"only {len(frames)} frames after skip_fs={config.skip_fs}: need at least "
                          f"{2 * config.n_blocks}")
    reference = frames[0] if {"mol_id", "formal_charge"} <= set(frames[0].arrays) else prepare_atoms(frames[0])
    dt = config.frame_interval_fs
    thermo = _thermo(frames, dt)
    temperature = config.temperature or _mean_temperature(thermo)
    positions = np.array([a.positions for a in frames])
    cells = np.array([a.cell.array for a in frames])
    volume = float(np.mean([abs(np.linalg.det(c)) for c in cells]))
    labels = _molecule_labels(reference)
    mol_id = reference.arrays["mol_id"]
    names, counts = np.unique(labels, return_counts=True)
    result = TrajectoryAnalysis(len(frames), dt, temperature, volume, dict(zip(names.tolist(), counts.tolist())),
                                thermo, {k: block_average(v).estimate for k, v in thermo.items() if k != "time_fs"})
    _structure(result, reference, positions, cells, labels[mol_id], mol_id, labels, config)
    _transport(result, reference, positions, cells, labels, config)
    if all(_has_result(a, "stress") for a in frames):
        stress = np.array([_stress(a) for a in frames])
        result.viscosity = green_kubo_viscosity(stress, dt, volume, temperature, config.viscosity_max_lag_fs,
                                                config.viscosity_plateau_fs, config.n_blocks)
    return result


def _mean_temperature(thermo: dict[str, np.ndarray]) -> float:
    if "temperature_K" not in thermo:
        raise ConfigError("the frames carry no momenta: set the analysis 'temperature' (K)")
    return float(np.mean(thermo["temperature_K"]))


def _structure(result: TrajectoryAnalysis, reference: Atoms, positions: np.ndarray, cells: np.ndarray,
               atom_labels: np.ndarray, mol_id: np.ndarray, labels: np.ndarray, config: AnalysisConfig) -> None:
    """RDFs, shell cutoffs (first minima), coordination numbers and solvation shells, on evenly spaced frames."""
    stride = max(1, len(positions) // config.rdf_max_frames)
    positions, cells = positions[::stride], cells[::stride]
    symbols = np.array(reference.get_chemical_symbols())
    pairs = config.rdf_pairs or [(c, d) for c in _SHELL_CATIONS for d in _DONORS if c in symbols and d in symbols]
    for a, b in pairs:
        key = f"{a}-{b}"
        index_a, index_b = select_atoms(symbols, atom_labels, a), select_atoms(symbols, atom_labels, b)
        result.rdfs[key] = rdf(positions, cells, index_a, index_b, config.rdf_r_max, config.rdf_bins, config.n_blocks)
        try:
            result.shell_cutoffs[key] = first_minimum(result.rdfs[key])[1]
        except ConfigError:
            continue
        result.coordination[key] = coordination_numbers(positions, cells, index_a, index_b,
                                                        result.shell_cutoffs[key])[0]
    for cation in _SHELL_CATIONS:
        donors = {b: (select_atoms(symbols, atom_labels, b), cut) for key, cut in result.shell_cutoffs.items()
                  for a, b in [key.split("-", 1)] if a == cation}
        if donors:
            result.shells[cation] = solvation_shells(positions, cells, select_atoms(symbols, atom_labels, cation),
                                                     donors, mol_id, labels)


def _transport(result: TrajectoryAnalysis, reference: Atoms, positions: np.ndarray, cells: np.ndarray,
               labels: np.ndarray, config: AnalysisConfig) -> None:
    """D per species (molecular centres, system drift removed) and the two conductivities."""
    masses = reference.get_masses()
    mol_id = reference.arrays["mol_id"]
    centres = molecule_centres(unwrap_positions(positions, cells), cells, masses, mol_id)
    mol_mass = np.bincount(mol_id, weights=masses)
    centres -= np.einsum("fmk,m->fk", centres, mol_mass / mol_mass.sum())[:, None, :]
    dt, window, blocks = config.frame_interval_fs, config.msd_fit_window_fs, config.n_blocks
    for name in np.unique(labels):
        result.diffusion[str(name)] = diffusion_coefficient(centres[:, labels == name], dt, window, blocks)
    charge = np.bincount(mol_id, weights=reference.arrays["formal_charge"]).round().astype(int)
    ionic = [str(n) for n in np.unique(labels[charge != 0])]
    if not ionic:
        return
    z = {name: int(charge[labels == name][0]) for name in ionic}
    result.conductivity["nernst_einstein"] = nernst_einstein_conductivity(
        [result.diffusion[n].value for n in ionic], [int(np.sum(labels == n)) for n in ionic], [z[n] for n in ionic],
        result.volume, result.temperature)
    charged = charge != 0
    result.conductivity["einstein"], result.charge_msd = einstein_conductivity(
        centres[:, charged], charge[charged], dt, result.volume, result.temperature, window, blocks)


def trajectory_summary(trajectory: Sequence[Atoms] | str | Path, config: AnalysisConfig) -> dict:
    """JSON-serialisable summary dict of :func:`analyze_trajectory`."""
    return analyze_trajectory(trajectory, config).to_dict()
