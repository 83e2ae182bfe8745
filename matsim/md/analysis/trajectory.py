"""Whole-trajectory analysis: options, frame loading, and the JSON-ready summary of every analysis.

Units and conventions: see :mod:`matsim.md.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import ase.io
import numpy as np
from ase import Atoms
from pydantic import Field, PositiveFloat, PositiveInt

from matsim.core.config import StrictModel
from matsim.core.errors import ConfigError, InputFileError
from matsim.core.units import AMU_PER_A3_TO_G_PER_CM3, EV_PER_A3_TO_GPA
from matsim.md.builder import prepare_atoms
from matsim.md.species import molecular_formula, species_by_formula
from matsim.md.analysis.statistics import A2_PER_FS_TO_CM2_PER_S, Estimate, block_average
from matsim.md.analysis.structure import (
    RDF,
    SolvationShells,
    coordination_numbers,
    first_minimum,
    rdf,
    solvation_shells,
)
from matsim.md.analysis.transport import (
    EinsteinFit,
    GreenKubo,
    diffusion_coefficient,
    einstein_conductivity,
    green_kubo_viscosity,
    molecule_centres,
    nernst_einstein_conductivity,
    unwrap_positions,
)


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


def molecule_labels(atoms: Atoms) -> np.ndarray:
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
    labels = molecule_labels(reference)
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
