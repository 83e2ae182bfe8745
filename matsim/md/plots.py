"""PNG figures of an MD analysis (matplotlib, Agg backend): thermo time series, RDFs with coordination numbers,
MSDs with their fit windows, and the Green–Kubo running integral. Each function writes one file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from matsim.md.analysis import A2_PER_FS_TO_CM2_PER_S, RDF, EinsteinFit, GreenKubo, TrajectoryAnalysis  # noqa: E402

__all__ = ["plot_thermo", "plot_rdfs", "plot_msd", "plot_green_kubo", "plot_analysis"]

_THERMO_LABELS = {
    "temperature_K": "T (K)",
    "pressure_GPa": "P (GPa)",
    "density_g_cm3": "density (g/cm³)",
    "energy_eV": "potential energy (eV)",
}


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_thermo(thermo: dict[str, np.ndarray], path: str | Path) -> Path:
    """Time series (x: ``thermo["time_fs"]`` shown in ps) of T, P, density and energy, one panel each present."""
    keys = [k for k in _THERMO_LABELS if k in thermo]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    time_ps = thermo["time_fs"] / 1000.0
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(time_ps, thermo[key], lw=0.8)
        ax.axhline(np.mean(thermo[key]), color="k", ls="--", lw=0.8)
        ax.set_ylabel(_THERMO_LABELS[key])
    axes[-1, 0].set_xlabel("time (ps)")
    return _save(fig, path)


def plot_rdfs(rdfs: dict[str, RDF], path: str | Path, cutoffs: dict[str, float] | None = None) -> Path:
    """g(r) (left axis) and running coordination number (right axis, dashed) per pair; shell cutoffs dotted."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cn_axis = ax.twinx()
    for key, result in rdfs.items():
        line, = ax.plot(result.r, result.g, label=key)
        cn_axis.plot(result.r, result.cn, ls="--", color=line.get_color())
        if cutoffs and key in cutoffs:
            ax.axvline(cutoffs[key], ls=":", color=line.get_color())
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    cn_axis.set_ylabel("coordination number n(r) (dashed)")
    ax.legend()
    return _save(fig, path)


def plot_msd(fits: dict[str, EinsteinFit], path: str | Path) -> Path:
    """MSD per species (log–log) with its block error band, the linear fit and the shaded fit window."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, fit in fits.items():
        t = fit.time_fs[1:] / 1000.0
        line, = ax.plot(t, fit.msd[1:], label=f"{name}: D = {fit.value.value * A2_PER_FS_TO_CM2_PER_S:.2e} cm²/s")
        ax.fill_between(t, fit.msd[1:] - fit.msd_error[1:], fit.msd[1:] + fit.msd_error[1:], color=line.get_color(),
                        alpha=0.2)
        ax.plot(t, 6.0 * fit.value.value * fit.time_fs[1:] + fit.intercept, ls=":", color=line.get_color())
    if fits:
        start, end = next(iter(fits.values())).window_fs
        ax.axvspan(start / 1000.0, end / 1000.0, color="grey", alpha=0.15, label="fit window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_green_kubo(result: GreenKubo, path: str | Path) -> Path:
    """Running Green–Kubo integral η(t) with its block error band, the plateau window and value."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = result.time_fs / 1000.0
    ax.plot(t, result.running, label="running integral")
    ax.fill_between(t, result.running - result.running_error, result.running + result.running_error, alpha=0.25)
    ax.axvspan(result.window_fs[0] / 1000.0, result.window_fs[1] / 1000.0, color="grey", alpha=0.15,
               label="plateau window")
    ax.axhline(result.value.value, color="k", ls="--",
               label=f"η = {result.value.value:.3g} ± {result.value.error:.2g} mPa·s")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("η (mPa·s)")
    ax.legend()
    return _save(fig, path)


def plot_analysis(analysis: TrajectoryAnalysis, directory: str | Path) -> list[Path]:
    """All figures of ``analysis`` into ``directory``: thermo.png, rdf.png, msd.png, green_kubo.png (when present)."""
    directory = Path(directory)
    paths = [plot_thermo(analysis.thermo, directory / "thermo.png")]
    if analysis.rdfs:
        paths.append(plot_rdfs(analysis.rdfs, directory / "rdf.png", analysis.shell_cutoffs))
    if analysis.diffusion:
        paths.append(plot_msd(analysis.diffusion, directory / "msd.png"))
    if analysis.viscosity is not None:
        paths.append(plot_green_kubo(analysis.viscosity, directory / "green_kubo.png"))
    return paths
