"""``matsim data electrolyte``: DFT-sized clusters cut from MD snapshots of electrolyte liquids.

For every liquid of an :class:`ElectrolyteSamplingConfig`:

1. the box is built (:func:`matsim.md.builder.build_box`) and a short MD run seeds the snapshots
   (:func:`matsim.md.runner.run_md`; GFN2-xTB through tblite by default, ``md.model`` may be a checkpoint or a
   pretrained name): a FIRE minimisation, a Langevin equilibration and a Langevin production stage at
   ``md.temperature_K`` whose frames, every ``snapshots.every_steps`` steps, are the snapshots. The run lives in
   ``OUTPUT/md/<liquid>/``; a rerun reuses a finished run and resumes an interrupted one (same config) instead of
   starting over. Or ``trajectory: PATH`` skips the MD and takes the frames of that file;
2. ``snapshots.count`` snapshots are taken (``skip`` frames dropped first, then every ``stride``-th frame);
3. clusters are cut from each (:func:`matsim.datasets.clusters.cut_clusters`, options ``clusters``), seeded by
   ``(seed, liquid index, snapshot index)``.

Output in ``OUTPUT/``: ``clusters.extxyz`` (every cluster, with ``info["liquid"]`` added to the cutter's info) and
``summary.json`` (counts by kind, by liquid and kind, by size in bins of 10 atoms, skips by reason, per-liquid
snapshots, MD directory and any error). A liquid whose MD fails (blow-up, SCF trouble) is reported in the summary and
the others go on; the run fails only when no liquid gives a snapshot. Labelling is a separate step:
``matsim data label OUTPUT/clusters.extxyz --method dft|gfn2``.

The optional ``active_learning`` section (or ``--select N --ensemble A.pt --ensemble B.pt`` on the command line)
then picks the N clusters an ensemble of potentials disagrees on most (:mod:`matsim.datasets.active_learning`) and
writes them to ``selected.extxyz``, with ``selection.json``.

Liquids are listed one by one (``liquids``) and/or as a ``grid`` of solvents × salts × concentrations.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import ase.io
import numpy as np
from ase import Atoms
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from matsim.core.config import StrictModel, load_config
from matsim.core.errors import ConfigError, InputFileError, MatsimError
from matsim.core.io import atomic_write_text
from matsim.datasets.clusters import ClusterOptions, CutReport, cut_clusters
from matsim.md.builder import SaltSpec, SolventSpec, SystemConfig

__all__ = ["LiquidConfig", "LiquidGrid", "SeedMDConfig", "SnapshotConfig", "ActiveLearningConfig",
           "ElectrolyteSamplingConfig", "SamplingResult", "load_sampling_config", "sample_electrolyte",
           "write_frames", "snapshot_frames"]


class LiquidConfig(StrictModel):
    """One liquid: a box to build (``system``) or the frames of an existing trajectory (``trajectory``)."""

    name: str | None = Field(default=None, description="label in the output (default: from the composition)")
    system: SystemConfig | None = None
    trajectory: Path | None = Field(default=None, description="extxyz/traj of periodic frames: no MD is run")

    @model_validator(mode="after")
    def _one_source(self) -> LiquidConfig:
        if (self.system is None) == (self.trajectory is None):
            raise ValueError("give exactly one of 'system' (a box to build and run) and 'trajectory' (frames to cut)")
        return self

    def label(self) -> str:
        """``name``, else e.g. ``EC-DMC_LiPF6-1M`` from the system, else the trajectory's file stem."""
        if self.name:
            return self.name
        if self.system is None:
            return self.trajectory.stem
        solvents = "-".join(s.name for s in self.system.solvents)
        salts = "_".join(f"{s.name or s.cation + '.' + s.anion}-{s.concentration:g}{'M' if s.unit == 'mol/L' else 'm'}"
                         for s in self.system.salts)
        return f"{solvents}_{salts}" if salts else solvents


class LiquidGrid(StrictModel):
    """Every combination of one solvent, one salt and one concentration (mol/L), each a box of ``n_atoms``."""

    solvents: list[str] = Field(min_length=1)
    salts: list[str] = Field(min_length=1)
    concentrations: list[PositiveFloat] = Field(default_factory=lambda: [1.0], min_length=1)
    n_atoms: PositiveInt = 300
    seed: NonNegativeInt = 0

    def liquids(self) -> list[LiquidConfig]:
        out = []
        for solvent in self.solvents:
            for salt in self.salts:
                for conc in self.concentrations:
                    system = SystemConfig(solvents=[SolventSpec(name=solvent)],
                                          salts=[SaltSpec(name=salt, concentration=conc)],
                                          n_atoms=self.n_atoms, seed=self.seed)
                    out.append(LiquidConfig(system=system))
        return out


class SeedMDConfig(StrictModel):
    """The short MD that makes the snapshots (stages: minimise, Langevin equilibration, Langevin production).

    Langevin because these runs only sample configurations (robust from a freshly packed box; the dynamics do not
    matter). A temperature above room temperature widens the sampled configurations a little.
    """

    model: str = Field(default="xtb", description="xtb (GFN2-xTB), xtb-gfn1, sevennet:7net-0 (a universal potential), "
                                                  "a checkpoint path or a pretrained name")
    device: str = "auto"
    jobs: PositiveInt = Field(default=1, description="liquids whose MD runs at the same time, one process each")
    dtype: Literal["float32", "float64"] = "float32"
    temperature_K: PositiveFloat = 350.0
    timestep_fs: PositiveFloat = 0.5
    minimise_steps: NonNegativeInt = 50
    equilibration_steps: NonNegativeInt = 200
    friction_per_fs: PositiveFloat = 0.02


class SnapshotConfig(StrictModel):
    """Which frames are cut: drop ``skip``, then every ``stride``-th, at most ``count``.

    With MD, production frames are written every ``every_steps`` steps and the production stage is just long
    enough: ``(skip + (count - 1) * stride + 1) * every_steps`` steps.
    """

    count: PositiveInt = 4
    every_steps: PositiveInt = 100
    skip: NonNegativeInt = 0
    stride: PositiveInt = 1


class ActiveLearningConfig(StrictModel):
    """Pick the ``select`` clusters an ensemble disagrees on most (:func:`~matsim.datasets.active_learning.
    select_by_disagreement`)."""

    select: PositiveInt
    ensemble: list[str] = Field(min_length=2, description="checkpoint paths or pretrained names")
    reduce: Literal["max", "mean"] = "max"
    floor: float | None = Field(default=None, description="eV/Å; frames the ensemble agrees on better are skipped")
    ceiling: float | None = Field(default=None, description="eV/Å; frames with more disagreement are unphysical")
    per_kind: dict[str, NonNegativeInt] | None = Field(default=None, description="clusters per kind taken first")
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"


class ElectrolyteSamplingConfig(StrictModel):
    """A whole ``matsim data electrolyte`` run (module docstring)."""

    liquids: list[LiquidConfig] = Field(default_factory=list)
    grid: LiquidGrid | None = None
    md: SeedMDConfig = Field(default_factory=SeedMDConfig)
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    clusters: ClusterOptions = Field(default_factory=ClusterOptions)
    active_learning: ActiveLearningConfig | None = None
    output: Path = Path("runs/electrolyte_data")
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _some_liquid(self) -> ElectrolyteSamplingConfig:
        if not self.liquids and self.grid is None:
            raise ValueError("give 'liquids' and/or a 'grid' of solvents x salts")
        labels = [liquid.label() for liquid in self.all_liquids()]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"liquid names must be unique (give 'name'): {', '.join(duplicates)} repeat")
        return self

    def all_liquids(self) -> list[LiquidConfig]:
        """``liquids`` then the expanded ``grid``."""
        return [*self.liquids, *(self.grid.liquids() if self.grid else [])]


def load_sampling_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ElectrolyteSamplingConfig:
    """Read and validate a config YAML; relative trajectory paths are taken relative to the YAML file."""
    config = load_config(ElectrolyteSamplingConfig, path, overrides)
    base = Path(path).resolve().parent
    for liquid in config.liquids:
        if liquid.trajectory is not None and not liquid.trajectory.is_absolute():
            candidate = base / liquid.trajectory
            if candidate.exists() or not liquid.trajectory.exists():
                liquid.trajectory = candidate
    return config


@dataclass
class SamplingResult:
    """What :func:`sample_electrolyte` made: the clusters, the files and the summary."""

    clusters: list[Atoms]
    clusters_path: Path
    summary_path: Path
    summary: dict
    selected_path: Path | None = None
    selected: list[Atoms] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ snapshots


def _md_config(liquid: LiquidConfig, config: ElectrolyteSamplingConfig):
    from matsim.md.config import MDConfig

    md, snaps = config.md, config.snapshots
    production = (snaps.skip + (snaps.count - 1) * snaps.stride + 1) * snaps.every_steps
    stages = []
    if md.minimise_steps:
        stages.append({"kind": "minimise", "steps": md.minimise_steps, "fmax": 0.5})
    if md.equilibration_steps:
        stages.append({"kind": "nvt", "name": "equilibration", "steps": md.equilibration_steps,
                       "timestep_fs": md.timestep_fs, "temperature_K": md.temperature_K, "thermostat": "langevin",
                       "friction_per_fs": md.friction_per_fs})
    stages.append({"kind": "nvt", "name": "production", "steps": production, "timestep_fs": md.timestep_fs,
                   "temperature_K": md.temperature_K, "thermostat": "langevin", "friction_per_fs": md.friction_per_fs})
    return MDConfig(
        system=liquid.system, model=md.model, device=md.device, dtype=md.dtype, stages=stages, seed=config.seed,
        output={"trajectory_every": snaps.every_steps, "thermo_every": snaps.every_steps,
                "checkpoint_every": max(snaps.every_steps, 100), "progress": False},
        analysis={"enabled": False},
    )


def _run_seed_md(liquid: LiquidConfig, config: ElectrolyteSamplingConfig, directory: Path) -> list[Atoms]:
    """Production frames of the liquid's MD in ``directory`` (run, resumed or reused)."""
    from matsim.md.runner import CHECKPOINT_NAME, run_md

    md_config = _md_config(liquid, config)
    if not (directory / "final.extxyz").exists():
        run_md(md_config, directory, resume=(directory / CHECKPOINT_NAME).exists(), progress=False, analyze=False)
    frames = ase.io.read(directory / "trajectory.extxyz", index=":", format="extxyz")
    return [f for f in frames if f.info.get("stage") == "production"]


def _seed_md_job(liquid: LiquidConfig, config: ElectrolyteSamplingConfig, directory: Path) -> str | None:
    """Run one liquid's seed MD in a worker process; the error message, or None when it finished."""
    try:
        _run_seed_md(liquid, config, directory)
    except MatsimError as exc:
        return str(exc)
    return None


def _run_seed_md_in_parallel(config: ElectrolyteSamplingConfig, directory: Path,
                             log: Callable[[str], None]) -> dict[str, str]:
    """The seed MDs of all built liquids, ``config.md.jobs`` processes at a time; liquid name -> error message.

    Finished runs are left for the serial pass to read (it reuses them); a failed one is not run again there.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    todo = [liquid for liquid in config.all_liquids() if liquid.system is not None]
    errors: dict[str, str] = {}
    log(f"seed MD of {len(todo)} liquids with {config.md.model}, {config.md.jobs} at a time")
    with ProcessPoolExecutor(max_workers=config.md.jobs, mp_context=get_context("spawn")) as pool:
        futures = {liquid.label(): pool.submit(_seed_md_job, liquid, config, directory / "md" / liquid.label())
                   for liquid in todo}
        for name, future in futures.items():
            error = future.result()
            if error is not None:
                errors[name] = error
            log(f"{name}: MD {'failed: ' + error if error else 'done'}")
    return errors


def _read_trajectory(path: Path) -> list[Atoms]:
    """Frames of a trajectory file, each with ``mol_id`` / ``formal_charge`` (found from the first frame if absent)."""
    from matsim.datasets.atoms import read_frames
    from matsim.md.builder import prepare_atoms

    if not path.is_file():
        raise InputFileError(f"trajectory file not found: {path}")
    frames = read_frames(path)
    if any(key not in frames[0].arrays for key in ("mol_id", "formal_charge")):
        template = prepare_atoms(frames[0], str(path))
        for frame in frames:
            if len(frame) != len(template):
                raise InputFileError(f"{path}: frames differ in atom count; cannot carry molecule ids over")
            frame.arrays["mol_id"] = template.arrays["mol_id"].copy()
            frame.arrays["formal_charge"] = template.arrays["formal_charge"].copy()
    return frames


def snapshot_frames(frames: list[Atoms], snapshots: SnapshotConfig) -> list[tuple[int, Atoms]]:
    """``(frame index, frame)`` of the frames to cut: ``skip`` dropped, then every ``stride``-th, at most ``count``."""
    indexed = list(enumerate(frames))[snapshots.skip::snapshots.stride]
    return indexed[: snapshots.count]


# ------------------------------------------------------------------------------------------------ output


def write_frames(frames: list[Atoms], path: str | Path) -> Path:
    """Write ``frames`` as extxyz atomically (no calculator results; a crash never leaves half a file)."""
    buffer = io.StringIO()
    clean = []
    for frame in frames:
        copy = frame.copy()
        copy.calc = None
        clean.append(copy)
    ase.io.write(buffer, clean, format="extxyz")
    return atomic_write_text(path, buffer.getvalue())


def _size_bin(n: int) -> str:
    low = 10 * (n // 10)
    return f"{low}-{low + 9}"


def _summary(clusters: list[Atoms], liquids: dict, report: CutReport, config: ElectrolyteSamplingConfig,
             wall_s: float) -> dict:
    by_liquid: dict[str, Counter] = {}
    for c in clusters:
        by_liquid.setdefault(c.info["liquid"], Counter())[c.info["cluster_kind"]] += 1
    sizes = [len(c) for c in clusters]
    by_size = Counter(_size_bin(n) for n in sizes)
    return {
        "n_clusters": len(clusters),
        "by_kind": dict(Counter(c.info["cluster_kind"] for c in clusters)),
        "by_liquid": {name: dict(counts) for name, counts in by_liquid.items()},
        "by_size": {k: by_size[k] for k in sorted(by_size, key=lambda s: int(s.split("-")[0]))},
        "by_charge": dict(sorted(Counter(str(c.info["charge"]) for c in clusters).items())),
        "atoms": ({"min": min(sizes), "max": max(sizes), "mean": round(float(np.mean(sizes)), 2)} if sizes else {}),
        "skipped": dict(report.skipped),
        "liquids": liquids,
        "seed": config.seed,
        "window": [config.clusters.min_atoms, config.clusters.max_atoms],
        "wall_s": round(wall_s, 2),
    }


def _check_liquids(config: ElectrolyteSamplingConfig) -> None:
    """Fail in seconds, before any MD, on a composition that cannot be built or a missing trajectory file."""
    from matsim.md.builder import plan_composition

    for liquid in config.all_liquids():
        try:
            if liquid.system is not None:
                plan_composition(liquid.system)
            elif not liquid.trajectory.is_file():
                raise InputFileError(f"trajectory file not found: {liquid.trajectory}")
        except MatsimError as exc:
            raise type(exc)(f"liquid {liquid.label()}: {exc}") from exc


def sample_electrolyte(config: ElectrolyteSamplingConfig, output_dir: str | Path | None = None,
                       log: Callable[[str], None] | None = None) -> SamplingResult:
    """Run the pipeline of the module docstring into ``output_dir`` (default ``config.output``).

    Raises:
        MatsimError: no liquid gave a snapshot (each liquid's error is in the message and in ``summary.json``).
    """
    started = time.perf_counter()
    log = log or (lambda message: None)
    directory = Path(output_dir if output_dir is not None else config.output)
    directory.mkdir(parents=True, exist_ok=True)
    _check_liquids(config)
    clusters: list[Atoms] = []
    report = CutReport()
    liquids: dict[str, dict] = {}
    md_errors = _run_seed_md_in_parallel(config, directory, log) if config.md.jobs > 1 else {}
    for liquid_index, liquid in enumerate(config.all_liquids()):
        name = liquid.label()
        entry: dict = {"source": str(liquid.trajectory) if liquid.trajectory else "md"}
        liquids[name] = entry
        try:
            if liquid.trajectory is not None:
                frames = _read_trajectory(liquid.trajectory)
            else:
                md_dir = directory / "md" / name
                entry["md_dir"] = str(md_dir)
                if name in md_errors:
                    raise MatsimError(md_errors[name])
                log(f"{name}: MD with {config.md.model} in {md_dir}")
                frames = _run_seed_md(liquid, config, md_dir)
        except MatsimError as exc:
            entry["error"] = str(exc)
            log(f"{name}: skipped: {exc}")
            continue
        chosen = snapshot_frames(frames, config.snapshots)
        entry.update(frames=len(frames), snapshots=[i for i, _ in chosen], atoms=len(frames[0]) if frames else 0)
        liquid_report = CutReport()
        for k, (frame_index, frame) in enumerate(chosen):
            cut = cut_clusters(frame, config.clusters, seed=config.seed, snapshot_index=liquid_index * 100_000 + k,
                               snapshot_id=f"{name}/frame{frame_index}", report=liquid_report)
            for cluster in cut:
                cluster.info["liquid"] = name
            clusters.extend(cut)
        entry["clusters"] = sum(liquid_report.kept.values())
        report.update(liquid_report)
        log(f"{name}: {len(chosen)} snapshots, {entry['clusters']} clusters")
    summary = _summary(clusters, liquids, report, config, time.perf_counter() - started)
    clusters_path = write_frames(clusters, directory / "clusters.extxyz")
    summary_path = atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not any("snapshots" in entry for entry in liquids.values()):
        errors = "; ".join(f"{n}: {e.get('error')}" for n, e in liquids.items())
        raise MatsimError(f"no liquid gave a snapshot ({errors})")
    result = SamplingResult(clusters, clusters_path, summary_path, summary)
    if config.active_learning is not None:
        _select(config.active_learning, result, directory, log)
    return result


def _select(al: ActiveLearningConfig, result: SamplingResult, directory: Path, log: Callable[[str], None]) -> None:
    from matsim.datasets.active_learning import select_by_disagreement

    if not result.clusters:
        raise ConfigError("active learning: there are no clusters to select from")
    log(f"active learning: {len(al.ensemble)} models on {len(result.clusters)} clusters")
    selection = select_by_disagreement(result.clusters, al.ensemble, al.select, reduce=al.reduce, floor=al.floor,
                                       ceiling=al.ceiling, per_kind=al.per_kind, device=al.device, dtype=al.dtype)
    result.selected = selection.frames
    result.selected_path = write_frames(selection.frames, directory / "selected.extxyz")
    atomic_write_text(directory / "selection.json", json.dumps(selection.summary(), indent=2) + "\n")
