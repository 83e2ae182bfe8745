"""The configuration of ``matsim md run``: what to simulate, with which model, through which stages, what to write
and what to analyse. One YAML file validated by :class:`MDConfig` (unknown keys and bad values are rejected with the
key path named; see :func:`matsim.core.config.load_config`).

Units: time in fs, temperature in K, pressure in bar, distances in Å, forces in eV/Å.

Stages run in order; positions, momenta and cell carry over from one to the next:

- ``minimise``: FIRE down to ``fmax`` (eV/Å) or ``steps``; ``cell_filter: true`` relaxes the cell too
  (ASE's ``FrechetCellFilter``, towards ``pressure_bar``).
- ``nvt``: thermostat ``nose-hoover-chain`` (default; ASE's ``NoseHooverChainNVT``, deterministic and global, so it
  leaves the dynamics - diffusion, conductivity, viscosity - nearly untouched), ``bussi`` (stochastic velocity
  rescaling, global) or ``langevin`` (friction ``friction_per_fs``, default 0.01 fs⁻¹; local, robust, but it slows
  diffusion: use it for equilibration, not for transport).
- ``npt``: barostat ``berendsen`` (default; ASE's ``NPTBerendsen``: isotropic cell scaling with ``compressibility``
  and ``pdamp_fs``, plus Berendsen velocity scaling with ``tdamp_fs``) or ``mtk`` (ASE's ``IsotropicMTKNPT``:
  Martyna-Tobias-Klein with Nosé-Hoover chains, ``tdamp_fs`` and ``pdamp_fs``). Berendsen is the default because NPT
  here is equilibration: a freshly packed box sits at GPa pressures, and Berendsen relaxes the volume exponentially
  from there without the large volume oscillations of an extended-system barostat (it does not sample the exact NPT
  ensemble; choose ``mtk`` for NPT production).

Thermostat defaults: ``tdamp_fs`` 100 fs (Nosé-Hoover chain of 3, Bussi, Berendsen), Langevin friction 0.01 fs⁻¹;
barostat ``pdamp_fs`` 1000 fs, compressibility 4.57e-5 bar⁻¹ (water; carbonates are ~7e-5: the value only sets
the rate of Berendsen's volume relaxation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from matsim.core.config import StrictModel, load_config
from matsim.md.analysis import AnalysisOptions
from matsim.md.builder import SystemConfig

__all__ = ["StageConfig", "OutputConfig", "WatchdogConfig", "AnalysisSection", "MDConfig", "load_md_config",
           "ANALYSES"]

#: Analyses the runner can report (``analysis.include``).
ANALYSES = ("density", "rdf", "coordination", "msd", "conductivity", "viscosity")

StageKind = Literal["minimise", "nvt", "npt"]
Thermostat = Literal["nose-hoover-chain", "langevin", "bussi", "berendsen"]


class StageConfig(StrictModel):
    """One stage: ``minimise``, ``nvt`` or ``npt`` (module docstring for the integrators and their defaults)."""

    kind: StageKind
    name: str | None = Field(default=None, description="label in thermo.csv and trajectory frames (default: kind, "
                                                       "numbered when a kind repeats)")
    steps: NonNegativeInt = Field(description="MD steps, or the most optimiser steps for minimise")
    timestep_fs: PositiveFloat = 1.0
    temperature_K: PositiveFloat | None = Field(default=None, description="required for nvt and npt")
    pressure_bar: float = Field(default=1.01325, description="npt (and minimise with cell_filter)")
    thermostat: Thermostat | None = Field(
        default=None, description="nvt: nose-hoover-chain (default), bussi or langevin; npt: the barostat's own "
                                  "(berendsen for berendsen, nose-hoover-chain for mtk)")
    tdamp_fs: PositiveFloat = 100.0
    tchain: PositiveInt = 3
    friction_per_fs: PositiveFloat = 0.01
    barostat: Literal["berendsen", "mtk"] = "berendsen"
    pdamp_fs: PositiveFloat = 1000.0
    compressibility_per_bar: PositiveFloat = 4.57e-5
    fmax: PositiveFloat = Field(default=0.1, description="minimise: force convergence, eV/Å")
    cell_filter: bool = Field(default=False, description="minimise: relax the cell too (FrechetCellFilter)")
    maxstep: PositiveFloat = Field(default=0.1, description="minimise: largest FIRE displacement per step, Å")

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        if self.kind in ("nvt", "npt") and self.temperature_K is None:
            raise ValueError(f"a {self.kind} stage needs temperature_K")
        if self.kind == "nvt" and self.thermostat == "berendsen":
            raise ValueError("nvt thermostats: nose-hoover-chain, bussi, langevin (berendsen only inside npt "
                             "with the berendsen barostat)")
        if self.kind == "npt" and self.thermostat is not None:
            own = "berendsen" if self.barostat == "berendsen" else "nose-hoover-chain"
            if self.thermostat != own:
                raise ValueError(f"the {self.barostat} barostat brings its own thermostat ({own}); "
                                 f"thermostat {self.thermostat!r} cannot be combined with it")
        return self

    @property
    def resolved_thermostat(self) -> str | None:
        """The thermostat this stage actually uses (None for minimise)."""
        if self.kind == "minimise":
            return None
        if self.kind == "npt":
            return "berendsen" if self.barostat == "berendsen" else "nose-hoover-chain"
        return self.thermostat or "nose-hoover-chain"


class OutputConfig(StrictModel):
    """What is written, every how many steps (of each stage)."""

    thermo_every: PositiveInt = 10
    trajectory_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 1000
    trajectory_format: Literal["extxyz", "traj"] = "extxyz"
    progress: bool = Field(default=True, description="rich progress bar on stderr")


class WatchdogConfig(StrictModel):
    """Blow-up detection, checked every ``check_every`` steps (and NaN/inf in forces every step).

    The run stops cleanly with a message naming what happened and when, and writes the last frame that passed
    the checks to ``last_good.extxyz``.
    """

    enabled: bool = True
    check_every: PositiveInt = 10
    min_distance: PositiveFloat = Field(default=0.5, description="Å; closer atoms mean a collapse")
    max_force: PositiveFloat = Field(default=50.0, description="eV/Å (MD stages)")
    max_temperature_factor: PositiveFloat = Field(default=3.0, description="stop above this × target temperature")


class AnalysisSection(AnalysisOptions):
    """Analysis of the production stage at the end of the run (and by ``matsim md analyze DIR``): which stage and
    which analyses, plus the options of :class:`matsim.md.analysis.AnalysisOptions` (the frame interval comes from
    the stage: trajectory_every × timestep)."""

    enabled: bool = True
    stage: str | int | None = Field(default=None, description="stage name or index (default: the last MD stage)")
    include: list[Literal["density", "rdf", "coordination", "msd", "conductivity", "viscosity"]] = Field(
        default_factory=lambda: list(ANALYSES))


class MDConfig(StrictModel):
    """A whole ``matsim md run``.

    ``system`` (a box to build, :class:`~matsim.md.builder.SystemConfig`) or ``structure`` (a file: extxyz, CIF,
    LAMMPS data), exactly one. ``model``: a shipped pretrained name, a checkpoint path, or ``xtb`` (GFN2-xTB through
    tblite; ``xtb-gfn1`` for GFN1), or ``sevennet:NAME`` (a SevenNet universal potential, e.g. ``sevennet:7net-0``,
    for sampling configurations; needs ``pip install sevenn``). ``seed`` seeds the initial velocities and the stochastic thermostats.
    """

    system: SystemConfig | None = None
    structure: Path | None = None
    model: str = "electrolyte-small"
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    compile: bool = Field(default=False, description="run a matsim potential through torch.compile (GPU: fused "
                          "kernels, ~1 min to compile on the first step)")
    stages: list[StageConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_source(self) -> MDConfig:
        if (self.system is None) == (self.structure is None):
            raise ValueError("give exactly one of 'system' (a box to build) and 'structure' (a file to read)")
        return self

    def stage_names(self) -> list[str]:
        """Unique stage labels: the given name, else the kind, numbered (npt1, npt2) when a kind repeats."""
        kinds = [s.kind for s in self.stages]
        names, seen = [], {}
        for stage in self.stages:
            if stage.name:
                names.append(stage.name)
                continue
            if kinds.count(stage.kind) == 1:
                names.append(stage.kind)
            else:
                seen[stage.kind] = seen.get(stage.kind, 0) + 1
                names.append(f"{stage.kind}{seen[stage.kind]}")
        return names

    @model_validator(mode="after")
    def _unique_names(self) -> MDConfig:
        names = self.stage_names()
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self


def load_md_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> MDConfig:
    """Read and validate an MD config YAML; a relative ``structure`` path is taken relative to the YAML file."""
    config = load_config(MDConfig, path, overrides)
    if config.structure is not None and not config.structure.is_absolute():
        candidate = Path(path).resolve().parent / config.structure
        if candidate.exists() or not config.structure.exists():
            config.structure = candidate
    return config
