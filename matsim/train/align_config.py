"""The configuration of ``matsim train align``: density alignment of a potential to experiment (:mod:`matsim.train.align`).

One YAML file validated by :class:`AlignConfig` (unknown keys are errors; relative paths are taken against the YAML
file's folder). Example (``examples/align_electrolyte.yaml``)::

    run_dir: ../runs/align-electrolyte
    model: electrolyte-small               # checkpoint path or shipped pretrained name
    experiment: ../../shared/data/electrolyte_experiment/solvent_properties_literature.csv
    liquids:
      - {name: DMC, system: {solvents: [{name: DMC}]}}           # density and temperature from the table
      - {name: LP30, temperature_K: 298.15, density_g_cm3: 1.29,
         system: {solvents: [{name: EC}, {name: DMC}], ratio_basis: mass,
                  salts: [{name: LiPF6, concentration: 1.0}]}}
    md: {n_atoms: 400, npt_steps: 10000, nvt_steps: 4000, frames: 40}
    replay: {file: ../benchmarks/electrolyte/data/dft-train.extxyz.xz}
    finetune: {epochs: 40, lr: 0.0005, loss: {energy: 1.0, forces: 10.0, stress: 100000.0}}
    tolerance_g_cm3: 0.01
    max_iterations: 4

Units: temperature K, density g/cm³, pressure bar, compressibility 1/bar, time fs, stress weights per (eV/Å³)².
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from matsim.core.config import DeviceName, StrictModel, apply_overrides, read_yaml, resolve_path, validate_config
from matsim.core.errors import ConfigError, InputFileError
from matsim.md.builder import SystemConfig

__all__ = ["AlignConfig", "LiquidConfig", "AlignMDSection", "CompressibilitySection", "ReplaySection",
           "FinetuneSection", "AlignLossSection", "load_align_config", "experimental_table"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class LiquidConfig(StrictModel):
    """One liquid to align: a box to build (``system``, as in ``matsim md run``) or a ``structure`` file, exactly one.

    ``temperature_K`` and ``density_g_cm3`` (experiment) default to the ``experiment`` table's row of ``name``
    (its abbreviation or solvent name; the table's temperature too). ``compressibility_per_bar`` fixes κ_T for this
    liquid instead of measuring it. ``density_source`` cites the experimental density (filled in from the table).
    """

    name: str
    system: SystemConfig | None = None
    structure: Path | None = None
    temperature_K: PositiveFloat | None = None
    density_g_cm3: PositiveFloat | None = None
    compressibility_per_bar: PositiveFloat | None = None
    density_source: str | None = None

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a liquid's name must be letters, digits and _ . + - (it names a folder)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "LiquidConfig":
        if (self.system is None) == (self.structure is None):
            raise ValueError("give exactly one of 'system' (a box to build) and 'structure' (a file to read)")
        return self


class AlignMDSection(StrictModel):
    """The MD of each iteration, per liquid: minimise (first iteration only) and NPT with the current model, short
    NVT runs for the compressibility, and an NVT run at the experimental density that gives the anchor frames.

    ``n_atoms`` sizes every ``system`` that gives neither ``n_atoms`` nor ``n_molecules``. ``frames`` anchor frames
    per liquid are taken evenly from the second half of the NVT run. ``dtype`` is the MD's and the anchor labels'.
    ``verify_steps`` (``correction: pressure`` only): NPT steps of the aligned model per liquid at the end, whose
    densities are the measured result (0: none, the record holds estimates only).
    """

    n_atoms: PositiveInt | None = None
    timestep_fs: PositiveFloat = 1.0
    minimise_steps: NonNegativeInt = 200
    fmax: PositiveFloat = 0.2
    npt_steps: PositiveInt = 10000
    barostat: Literal["berendsen", "mtk"] = "berendsen"
    pressure_bar: float = 1.01325
    pdamp_fs: PositiveFloat = 500.0
    tdamp_fs: PositiveFloat = 100.0
    nvt_steps: PositiveInt = 4000
    verify_steps: NonNegativeInt = 0
    thermostat: Literal["langevin", "bussi", "nose-hoover-chain"] = "langevin"
    frames: int = Field(20, ge=2)
    thermo_every: PositiveInt = 10
    dtype: Literal["float32", "float64"] = "float32"


class CompressibilitySection(StrictModel):
    """κ_T by finite differences: the mean pressure of two NVT runs of ``steps`` at ρ_exp·(1 ± ``strain``) (second
    halves), κ = 2·strain / (P₊ − P₋). Estimates outside [``min_per_bar``, ``max_per_bar``] are clamped with a
    warning (a non-positive slope takes ``max_per_bar``: the smallest correction). ``per_bar`` fixes κ for every
    liquid without runs (a liquid's own ``compressibility_per_bar`` wins)."""

    strain: float = Field(0.02, gt=0, le=0.1)
    steps: PositiveInt = 2000
    min_per_bar: PositiveFloat = 2e-5
    max_per_bar: PositiveFloat = 5e-4
    per_bar: PositiveFloat | None = None

    @model_validator(mode="after")
    def _range(self) -> "CompressibilitySection":
        if self.min_per_bar >= self.max_per_bar:
            raise ValueError("min_per_bar must be below max_per_bar")
        return self


class ReplaySection(StrictModel):
    """DFT replay: labelled frames (energy and forces; gas-phase clusters without stress) mixed into every
    fine-tuning set so the model keeps its reference accuracy. ``max_frames`` takes the first ones only."""

    file: Path
    energy_key: str = "energy"
    forces_key: str = "forces"
    max_frames: PositiveInt | None = None


class AlignLossSection(StrictModel):
    """Loss weights of the fine-tuning: energy per atom (eV/atom)², forces (eV/Å)², stress (eV/Å³)². A 1000 bar
    correction is 6.2e-4 eV/Å³, so the stress weight is large: 1e5 × (6.2e-4)² ≈ 0.04."""

    energy: float = Field(1.0, ge=0)
    forces: float = Field(10.0, ge=0)
    stress: float = Field(1e5, gt=0)


class FinetuneSection(StrictModel):
    """Fine-tuning of each iteration (through :class:`~matsim.train.trainer.Trainer`, from the previous model):
    epochs, AdamW learning rate, batch size, EMA decay, training dtype and the fraction of each liquid's anchors kept
    for validation (at least one frame per liquid)."""

    epochs: PositiveInt = 30
    lr: PositiveFloat = 5e-4
    batch_size: PositiveInt = 4
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    dtype: Literal["float32", "float64"] = "float32"
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    num_threads: PositiveInt | None = None
    loss: AlignLossSection = Field(default_factory=AlignLossSection)


class AlignConfig(StrictModel):
    """A density alignment (module docstring of :mod:`matsim.train.align`).

    ``max_iterations``: the most fine-tuning rounds (0 measures only); the run stops earlier once every liquid is
    within ``tolerance_g_cm3`` of experiment. ``experiment``: a CSV with columns ``abbrev``, ``solvent``, ``T_C``,
    ``density_g_cm3`` and ``source`` (``solvent_properties_literature.csv``).

    ``correction``: how an iteration measures the pressure correction. ``density``: NPT density, then
    ΔP = Δρ/(ρ_exp κ_T). ``pressure``: the mean pressure of the NVT run at ρ_exp, ΔP = P_target − P(ρ_exp), with the
    density error estimated as ρ_exp κ_T ΔP (κ_T must be given: ``compressibility.per_bar`` or per liquid); one MD
    run per liquid and iteration instead of four, and no wait for a drifting NPT density. ``jobs``: liquids whose
    MD runs at once, each in its own process (on one GPU small boxes are launch-bound, so they overlap).
    """

    run_dir: Path
    model: str = "electrolyte-small"
    device: DeviceName = "auto"
    seed: NonNegativeInt = 0
    experiment: Path | None = None
    liquids: list[LiquidConfig] = Field(min_length=1)
    md: AlignMDSection = Field(default_factory=AlignMDSection)
    compressibility: CompressibilitySection = Field(default_factory=CompressibilitySection)
    replay: ReplaySection | None = None
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    tolerance_g_cm3: PositiveFloat = 0.01
    max_iterations: NonNegativeInt = 5
    correction: Literal["density", "pressure"] = "density"
    jobs: PositiveInt = 1

    @model_validator(mode="before")
    @classmethod
    def _default_size(cls, data: Any) -> Any:
        """Give ``md.n_atoms`` to every ``system`` without a size of its own (before the systems are validated)."""
        if not isinstance(data, dict):
            return data
        n_atoms = (data.get("md") or {}).get("n_atoms") if isinstance(data.get("md"), dict) else None
        liquids = data.get("liquids")
        if n_atoms is None or not isinstance(liquids, list):
            return data
        for liquid in liquids:
            system = liquid.get("system") if isinstance(liquid, dict) else None
            if isinstance(system, dict) and system.get("n_atoms") is None and system.get("n_molecules") is None:
                liquid["system"] = {**system, "n_atoms": n_atoms}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> "AlignConfig":
        names = [liquid.name for liquid in self.liquids]
        if len(set(names)) != len(names):
            raise ValueError(f"liquid names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _pressure_mode_needs_compressibility(self) -> "AlignConfig":
        if self.correction == "pressure" and self.compressibility.per_bar is None:
            missing = [liquid.name for liquid in self.liquids if liquid.compressibility_per_bar is None]
            if missing:
                raise ValueError(f"correction 'pressure' turns pressure errors into density errors with κ_T: give "
                                 f"compressibility.per_bar, or compressibility_per_bar of {', '.join(missing)}")
        if self.md.verify_steps and self.correction != "pressure":
            raise ValueError("md.verify_steps is for correction 'pressure' (the density mode measures by NPT)")
        return self

    def to_plain(self) -> dict[str, Any]:
        """A JSON-like dict (paths as strings) for ``alignment.json``."""
        return self.model_dump(mode="json")


def experimental_table(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an experiment CSV with a density, by upper-case abbreviation and solvent name:
    ``{"density_g_cm3", "temperature_K", "source", "abbrev"}``."""
    if not path.is_file():
        raise InputFileError(f"experiment table not found: {path}")
    table: dict[str, dict[str, Any]] = {}
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if not (row.get("density_g_cm3") or "").strip():
                    continue
                entry = {"density_g_cm3": float(row["density_g_cm3"]),
                         "temperature_K": float(row["T_C"]) + 273.15 if (row.get("T_C") or "").strip() else None,
                         "source": f"{path.name}: {row.get('source') or 'no source given'}",
                         "abbrev": row.get("abbrev") or row.get("solvent")}
                for key in (row.get("abbrev"), row.get("solvent")):
                    if key:
                        table[key.strip().upper()] = entry
    except (KeyError, ValueError) as exc:
        raise InputFileError(f"{path}: not an experiment table with abbrev, T_C and density_g_cm3 columns "
                             f"({type(exc).__name__}: {exc})") from exc
    return table


def _fill_experiment(config: AlignConfig, source: str) -> AlignConfig:
    """Liquids with their experimental density and temperature filled in from ``config.experiment`` where missing."""
    table = None
    liquids = []
    for index, liquid in enumerate(config.liquids):
        where = f"{source}: liquids.{index} ({liquid.name})"
        update: dict[str, Any] = {}
        if liquid.density_g_cm3 is not None:
            update["density_source"] = liquid.density_source or "config"
        if liquid.density_g_cm3 is None or liquid.temperature_K is None:
            if config.experiment is None:
                missing = "density_g_cm3" if liquid.density_g_cm3 is None else "temperature_K"
                raise ConfigError(f"{where}: {missing} is not given and there is no experiment table to look it up "
                                  "(give it, or set experiment: solvent_properties_literature.csv)")
            table = table if table is not None else experimental_table(config.experiment)
            row = table.get(liquid.name.upper())
            if row is None:
                known = ", ".join(sorted({r["abbrev"] for r in table.values()}))
                raise ConfigError(f"{where}: no experimental density for {liquid.name!r} in {config.experiment} "
                                  f"(known: {known}); give density_g_cm3 and temperature_K")
            if liquid.density_g_cm3 is None:
                update["density_g_cm3"], update["density_source"] = row["density_g_cm3"], row["source"]
            if liquid.temperature_K is None:
                if row["temperature_K"] is None:
                    raise ConfigError(f"{where}: the table gives no temperature for {liquid.name!r}; give temperature_K")
                update["temperature_K"] = row["temperature_K"]
        liquids.append(liquid.model_copy(update=update))
    return config.model_copy(update={"liquids": liquids})


def load_align_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AlignConfig:
    """Read and validate an alignment YAML (with ``key.path=value`` overrides): relative paths against its folder,
    experimental densities and temperatures looked up in ``experiment`` where not given."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    config = validate_config(AlignConfig, data, source=str(path))
    base = path.resolve().parent
    liquids = [liquid.model_copy(update={"structure": resolve_path(liquid.structure, base)})
               for liquid in config.liquids]
    replay = config.replay
    if replay is not None:
        replay = replay.model_copy(update={"file": resolve_path(replay.file, base)})
    model = config.model
    if not _is_pretrained_name(model, base):
        model = str(resolve_path(Path(model), base))
    config = config.model_copy(update={"run_dir": resolve_path(config.run_dir, base), "liquids": liquids,
                                       "replay": replay, "experiment": resolve_path(config.experiment, base),
                                       "model": model})
    return _fill_experiment(config, str(path))


def _is_pretrained_name(value: str, base: Path) -> bool:
    """Whether ``model`` names a shipped pretrained model (a file of that name beside the YAML file wins)."""
    from matsim.models import pretrained

    return value in pretrained.available() and not (base / value).exists()
