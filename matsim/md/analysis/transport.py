"""Transport: mean squared displacements, self-diffusion, ionic conductivity, Green–Kubo viscosity.

Units and conventions: see :mod:`matsim.md.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from matsim.core.errors import ConfigError
from matsim.core.units import ELEMENTARY_CHARGE_C, KB_EV_PER_K
from matsim.md.analysis.statistics import (
    EV_FS_PER_A3_TO_MPA_S,
    Estimate,
    S_PER_M_TO_MS_PER_CM,
    _standard_error,
    _time_blocks,
)


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
