"""Density alignment to experiment (BAMBOO's recipe, issue 6 item 5): ``matsim train align CONFIG.yaml``.

A potential fitted to gas-phase clusters rarely gets the density of a liquid right. Alignment corrects it with a
pressure: NPT runs measure the model's densities, the density errors become pressure corrections, and the model is
fine-tuned to produce those pressures at the experimental densities while anchored to its own energies and forces
(and to DFT replay), until every liquid is within tolerance. Each iteration ``k`` does, per liquid:

1. **Density** (``iteration_k/<liquid>/npt``): NPT with the current model (built box, minimised, in the first
   iteration; the previous iteration's final frame afterwards) through :func:`matsim.md.runner.run_md`;
   ρ_model is the mean over the second half of the NPT rows of ``thermo.csv`` with its Flyvbjerg-Petersen block
   error. The run stops when every liquid has |ρ_model − ρ_exp| ≤ ``tolerance_g_cm3``, or after
   ``max_iterations`` fine-tuning rounds.
2. **Compressibility** (``kappa_low``, ``kappa_high``): κ_T = (1/ρ)(∂ρ/∂P)_T by a central finite difference, the
   mean pressures of two NVT runs at ρ_exp·(1 ∓ δ): κ = 2δ / (P₊ − P₋). Why not the volume fluctuations of the NPT
   run, κ = ⟨δV²⟩/(k_B T ⟨V⟩)? The default Berendsen barostat does not sample them (it suppresses them), an
   extended-system barostat needs long runs for a converged variance of a few-hundred-atom box, and the fluctuation
   is measured at ρ_model, not at ρ_exp where the correction acts. The finite difference works with any thermostat,
   converges like a mean pressure, and measures the slope of the model's own equation of state around ρ_exp.
   Estimates outside [``min_per_bar``, ``max_per_bar``] (default 2e-5 to 5e-4 1/bar; carbonates are near 7e-5) are
   clamped with a warning; ``compressibility_per_bar`` (per liquid, or ``compressibility.per_bar``) skips the runs.
3. **Pressure correction** ΔP = (ρ_model − ρ_exp) / (ρ_exp · κ_T), bar (:func:`pressure_correction_bar`): positive
   when the model is too dense, so its pressure at ρ_exp must rise for it to expand. Corrections add up over the
   iterations (ΔP_total of liquid L after iteration k = Σ_j≤k ΔP_j), a fixed-point iteration on the correction.
4. **Anchors** (``anchor_nvt``, ``anchors.extxyz``): an NVT run at ρ_exp (the NPT's final frame scaled by moving
   the molecules' centres of mass, so molecules stay whole and bonds keep their lengths; :func:`scale_to_density`);
   ``md.frames`` frames from its second half, labelled with the *reference* (pre-alignment) model's energy and
   forces and with stress σ_ref − ΔP_total·I (:func:`shifted_stress`; ASE's sign: P = −tr σ/3, so a pressure
   higher by ΔP is a stress diagonal lower by ΔP; bar to eV/Å³ with ``ase.units.bar``). The labels always come
   from the reference model, so energies and forces cannot drift from iteration to iteration.
5. **Fine-tuning** (``train.extxyz``, ``valid.extxyz``, ``train.yaml``, ``train/``): the anchors (a fraction per
   liquid held out for validation) plus the DFT replay frames (energy and forces, no stress: read with
   ``data.keys.missing_targets: skip``, so they contribute nothing to the stress term) train the current model
   through :class:`~matsim.train.trainer.Trainer` (``model.init_from``, E0s kept). ``model.pt`` is the result.

**The pressure correction** (``correction: pressure``): steps 1–3 are replaced by the NVT run at ρ_exp of step 4,
started from the built box packed at ρ_exp (minimised) in the first iteration and from the previous iteration's
last NVT frame afterwards. Its mean pressure (second half) gives ΔP = P_target − P_model(ρ_exp) directly, and the
density error is estimated as ρ_exp κ_T ΔP (:func:`estimated_density_error`, κ_T given in the config). This is the
quantity the fine-tuning acts on, measured where it acts, with no linearisation in Δρ; it costs one MD run per
liquid and iteration instead of four and does not wait for an NPT density that drifts for tens of picoseconds
(a liquid packed by packmol keeps restructuring for several ps). ``md.verify_steps`` then measures the aligned
model's densities by NPT (``verification/<liquid>``, ``alignment.json["verification"]``).

The pure functions named above are in :mod:`matsim.train.align_physics`.

``jobs`` > 1 runs the MD of all liquids of a step at once, each in a spawned process; the record is kept by the
parent, which collects the runs in order afterwards.

Dispersion at inference: a model whose ``dispersion`` hyperparameter adds D3 on top of a dispersion-free fit (the
shipped ``electrolyte-small``) is fine-tuned without it (``parent.pt``, ``reference.pt``): the replay labels are
dispersion-free DFT, and the anchors are the reference model's predictions without D3; D3 has no weights, so the
full model's pressure moves by the same ΔP. ``model.pt`` and ``aligned.pt`` have D3 switched back on.

Files in ``run_dir``: ``alignment.json`` (the config, then per iteration and liquid ρ_model ± error, ρ_exp, Δρ,
κ_T, ΔP, ΔP_total, the pressure at ρ_exp, and the steps done; rewritten atomically after every step, so a killed
run loses at most the step it was in), ``alignment.md`` (the same as a table), ``reference.pt`` and, at the end,
``aligned.pt``: the model of the converged iteration, else the measured one with the smallest largest |Δρ|.
``--resume`` skips the steps done and continues an interrupted MD run or training from its own checkpoint; only
``max_iterations``, ``tolerance_g_cm3`` and ``device`` may change.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from matsim.core.checkpoint import load_checkpoint
from matsim.core.config import validate_config
from matsim.core.errors import CheckpointError, ConfigError
from matsim.core.graph import total_charge
from matsim.core.io import atomic_write_text
from matsim.datasets.atoms import DataKeys, frame_targets, read_frames
from matsim.md.config import MDConfig
from matsim.md.runner import CHECKPOINT_NAME, run_md
from matsim.models import save_model
from matsim.train.align_config import AlignConfig, LiquidConfig, load_align_config
from matsim.train.align_physics import (
    clamp_compressibility,
    estimated_density_error,
    finite_difference_compressibility,
    pressure_correction_bar,
    scale_to_density,
    shifted_stress,
    stage_average,
)
from matsim.train.config import load_train_config
from matsim.train.finetune import switched_model
from matsim.train.run_dir import RESUME_FILE, changed_keys, read_run_record
from matsim.train.trainer import Trainer

__all__ = ["Aligner", "align", "align_from_file", "summary_markdown", "RECORD_NAME", "SUMMARY_NAME", "ALIGNED_NAME"]

RECORD_NAME = "alignment.json"
SUMMARY_NAME = "alignment.md"
ALIGNED_NAME = "aligned.pt"
_REFERENCE_NAME = "reference.pt"
_FORMAT = "matsim-alignment"
#: Config sections that must not change on --resume.
_FROZEN = ("model", "seed", "experiment", "liquids", "md", "compressibility", "replay", "finetune")


def _largest_deviation(iteration: dict[str, Any]) -> float:
    """The largest |Δρ| of an iteration's liquids: measured (NPT) where there is one, else estimated."""
    return max(abs(v["delta_g_cm3"] if "delta_g_cm3" in v else v["delta_estimated_g_cm3"])
               for v in iteration["liquids"].values())


def _run_md_job(data: dict[str, Any], directory: Path, log: Callable[[str], None] | None) -> None:
    """Run one MD config into ``directory``, continuing from its checkpoint when there is one."""
    config = validate_config(MDConfig, data, source=str(directory))
    resume = (directory / CHECKPOINT_NAME).exists()
    if not resume and directory.exists():
        shutil.rmtree(directory)  # a start killed before its first checkpoint: begin again
    run_md(config, directory, resume=resume, progress=False, analyze=False, log=log)


def _md_worker(data: dict[str, Any], directory: str, threads: int) -> None:
    """:func:`_run_md_job` in a worker process with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    _run_md_job(data, Path(directory), log=None)


def _number(value: float) -> float | None:
    """JSON has no NaN: non-finite numbers become None."""
    return float(value) if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------
# checkpoints with and without the dispersion added at inference
# ---------------------------------------------------------------------------------------------------------------
def _without_dispersion(source: Path, target: Path) -> str | None:
    """Write ``source`` without its ``dispersion`` term to ``target``; the dispersion's name (or None)."""
    checkpoint = load_checkpoint(source)
    dispersion = checkpoint.hyperparameters.get("dispersion")
    if not dispersion:
        shutil.copyfile(source, target)
        return None
    save_model(switched_model(checkpoint, str(source), dispersion=None), target, checkpoint.statistics,
               checkpoint.metadata)
    return str(dispersion)


def _with_dispersion(source: Path, target: Path, dispersion: str | None, metadata: dict[str, Any]) -> None:
    """Write ``source`` with ``dispersion`` switched on (when given) and ``metadata`` added to ``target``."""
    checkpoint = load_checkpoint(source)
    switches = {"dispersion": dispersion} if dispersion else {}
    save_model(switched_model(checkpoint, str(source), **switches), target, checkpoint.statistics,
               {**checkpoint.metadata, **metadata})


def _model_path(model: str) -> Path:
    """The checkpoint file of ``model`` (a path or a shipped pretrained name); CheckpointError if there is none."""
    from matsim.models import pretrained

    path = pretrained.path_of(model) or Path(model)
    if not path.is_file():
        names = ", ".join(pretrained.available()) or "none"
        raise CheckpointError(f"model: no checkpoint file or pretrained model {model!r} (shipped: {names})")
    return path


# ---------------------------------------------------------------------------------------------------------------
# the alignment loop
# ---------------------------------------------------------------------------------------------------------------
class Aligner:
    """One density alignment from an :class:`AlignConfig` (see the module docstring).

    Args:
        config: the validated config (paths absolute, experimental densities filled in: :func:`load_align_config`).
        resume: continue the alignment in ``config.run_dir`` after its last finished step.
        console: a rich Console for progress lines (default: a new one).
    """

    def __init__(self, config: AlignConfig, resume: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.console = console or Console()
        self.run_dir = Path(config.run_dir)
        self.original = _model_path(config.model)
        for liquid in config.liquids:
            if liquid.density_g_cm3 is None or liquid.temperature_K is None:
                raise ConfigError(f"liquids: {liquid.name} has no experimental density or temperature "
                                  "(load the config with load_align_config to look them up)")
        if config.replay is not None and not config.replay.file.is_file():
            raise ConfigError(f"replay.file: {config.replay.file} does not exist")
        self.record = self._open_record(resume)
        self._warned: set[str] = set()
        self._reference_calculator: Any = None

    # --- the record ----------------------------------------------------------------------------------------------
    def _open_record(self, resume: bool) -> dict[str, Any]:
        plain = self.config.to_plain()
        record = read_run_record(self.run_dir / RECORD_NAME, resume, _FORMAT, "an alignment")
        if record is None:
            return {"format": _FORMAT, "version": 1, "config": plain, "status": "running", "iterations": [],
                    "aligned_model": None, "aligned_iteration": None}
        changed = changed_keys(record["config"], plain, _FROZEN)
        if changed:
            raise ConfigError(f"cannot resume {self.run_dir}: the config differs from the alignment's in "
                              f"{', '.join(changed)} (only max_iterations, tolerance_g_cm3 and device may change)")
        record["config"], record["status"] = plain, "running"
        return record

    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / RECORD_NAME, json.dumps(self.record, indent=1) + "\n")
        atomic_write_text(self.run_dir / SUMMARY_NAME, summary_markdown(self.record))

    def _iteration(self, k: int) -> dict[str, Any]:
        iterations = self.record["iterations"]
        if k == len(iterations):
            model = str(self.original) if k == 0 else str(self._folder(k - 1) / "model.pt")
            iterations.append({"iteration": k, "model": model, "done": [], "converged": None,
                               "liquids": {liquid.name: {} for liquid in self.config.liquids},
                               "finetuned_model": None, "errors": None})
            self._save()
        return iterations[k]

    def _step(self, iteration: dict[str, Any], name: str, action: Callable[[], None]) -> None:
        """Run ``action`` (which fills ``iteration`` in) unless the step ``name`` is done; then record it."""
        if name in iteration["done"]:
            return
        action()
        iteration["done"].append(name)
        self._save()

    def _folder(self, k: int) -> Path:
        return self.run_dir / f"iteration_{k}"

    def _log(self, message: str) -> None:
        self.console.print(message)

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.console.print(f"[yellow]{message}[/yellow]")

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Align until every liquid is within tolerance or ``max_iterations`` fine-tuning rounds are done; returns
        the record (also in ``alignment.json``)."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        reference = self.run_dir / _REFERENCE_NAME
        if not reference.exists():
            _without_dispersion(self.original, reference)
        self._save()
        k = 0
        while True:
            iteration = self._iteration(k)
            if cfg.correction == "density":
                self._phase(iteration, [("npt", partial(self._npt_jobs, k), partial(self._collect_density, k))])
            else:
                self._phase(iteration, [("nvt", partial(self._pressure_nvt_jobs, k),
                                         partial(self._collect_pressure, k))])
            iteration["converged"] = _largest_deviation(iteration) <= cfg.tolerance_g_cm3
            if iteration["converged"] or k >= cfg.max_iterations:
                break
            if cfg.correction == "density":
                self._phase(iteration, [
                    ("compressibility", partial(self._kappa_jobs, k), partial(self._collect_kappa, k)),
                    ("anchors", partial(self._density_nvt_jobs, k), partial(self._label_anchors, k))])
            else:
                self._phase(iteration, [("anchors", None, partial(self._label_anchors, k))])
            self._step(iteration, "dataset", lambda: self._dataset(k))
            self._step(iteration, "finetune", lambda: self._finetune(k))
            k += 1
        self._finish(iteration)
        if cfg.md.verify_steps:
            self._verify()
        return self.record

    def _finish(self, last: dict[str, Any]) -> None:
        measured = [it for it in self.record["iterations"] if it["converged"] is not None]
        if last["converged"]:
            chosen, status = last, "converged"
        else:
            chosen, status = min(measured, key=_largest_deviation), "max_iterations"
        shutil.copyfile(chosen["model"], self.run_dir / ALIGNED_NAME)
        self.record.update(status=status, aligned_model=str(self.run_dir / ALIGNED_NAME),
                           aligned_iteration=chosen["iteration"])
        self._save()
        self._log(f"[bold]alignment {status}[/bold]: {ALIGNED_NAME} is the model of iteration {chosen['iteration']}; "
                  f"table in {self.run_dir / SUMMARY_NAME}")

    def _phase(self, iteration: dict[str, Any], steps: list[tuple[str, Callable | None, Callable]]) -> None:
        """Per-liquid steps ``(name, md_jobs_of(liquid) or None, collect(liquid))``: first the MD runs of every step
        not yet done, for all liquids at once (``jobs`` processes), then each step's collection, recorded one by one."""
        pending = [(f"{name}:{liquid.name}", md_jobs_of, collect, liquid) for name, md_jobs_of, collect in steps
                   for liquid in self.config.liquids if f"{name}:{liquid.name}" not in iteration["done"]]
        self._run_md_jobs([job for _, md_jobs_of, _, liquid in pending if md_jobs_of for job in md_jobs_of(liquid)])
        for step, _, collect, liquid in pending:
            self._step(iteration, step, lambda collect=collect, liquid=liquid: collect(liquid))

    # --- MD ------------------------------------------------------------------------------------------------------
    def _md_job(self, directory: Path, model: str, source: dict[str, Any], stages: list[dict[str, Any]],
                trajectory_every: int) -> tuple[Path, dict[str, Any]]:
        """One MD run: its folder and its ``matsim md run`` config (as a plain dict)."""
        md = self.config.md
        return directory, {**source, "model": model, "device": self.config.device, "dtype": md.dtype,
                           "stages": stages,
                           "output": {"thermo_every": md.thermo_every, "trajectory_every": trajectory_every,
                                      "checkpoint_every": 500, "progress": False},
                           "analysis": {"enabled": False}, "seed": self.config.seed}

    def _run_md_jobs(self, jobs: list[tuple[Path, dict[str, Any]]]) -> None:
        """Run MD jobs, ``config.jobs`` at a time in spawned processes (one at a time in this process for 1)."""
        if self.config.jobs == 1 or len(jobs) <= 1:
            for directory, data in jobs:
                _run_md_job(data, directory, log=self._warn)
            return
        workers = min(self.config.jobs, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        self._log(f"{len(jobs)} MD runs, {workers} at a time")
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_md_worker, data, str(directory), threads) for directory, data in jobs]
            for future in futures:
                future.result()

    def _nvt_stage(self, liquid: LiquidConfig, steps: int) -> dict[str, Any]:
        md = self.config.md
        return {"kind": "nvt", "name": "nvt", "steps": steps, "timestep_fs": md.timestep_fs,
                "temperature_K": liquid.temperature_K, "thermostat": md.thermostat, "tdamp_fs": md.tdamp_fs}

    def _npt_stage(self, liquid: LiquidConfig, steps: int) -> dict[str, Any]:
        md = self.config.md
        return {"kind": "npt", "name": "npt", "steps": steps, "timestep_fs": md.timestep_fs,
                "temperature_K": liquid.temperature_K, "pressure_bar": md.pressure_bar, "barostat": md.barostat,
                "pdamp_fs": md.pdamp_fs, "tdamp_fs": md.tdamp_fs}

    def _minimise_stages(self) -> list[dict[str, Any]]:
        md = self.config.md
        return [{"kind": "minimise", "steps": md.minimise_steps, "fmax": md.fmax}] if md.minimise_steps else []

    def _scaled_start(self, k: int, liquid: LiquidConfig, density: float, name: str) -> dict[str, Any]:
        """The NPT run's final frame scaled to ``density``, written beside the runs; the MD ``structure`` source."""
        final = ase.io.read(self._folder(k) / liquid.name / "npt" / "final.extxyz")
        path = self._folder(k) / liquid.name / f"{name}.extxyz"
        ase.io.write(path, scale_to_density(final, density), format="extxyz")
        return {"structure": str(path)}

    def _model_of(self, k: int) -> str:
        return self.record["iterations"][k]["model"]

    # density correction: NPT density, κ_T, anchors at ρ_exp
    def _npt_jobs(self, k: int, liquid: LiquidConfig) -> list:
        md = self.config.md
        if k == 0:
            source = {"system": liquid.system.model_dump(mode="json")} if liquid.system is not None \
                else {"structure": str(liquid.structure)}
            stages = self._minimise_stages() + [self._npt_stage(liquid, md.npt_steps)]
        else:
            source = {"structure": str(self._folder(k - 1) / liquid.name / "npt" / "final.extxyz")}
            stages = [self._npt_stage(liquid, md.npt_steps)]
        self._log(f"iteration {k}, {liquid.name}: NPT at {liquid.temperature_K:.2f} K, {md.npt_steps} steps")
        return [self._md_job(self._folder(k) / liquid.name / "npt", self._model_of(k), source, stages,
                             md.npt_steps)]

    def _collect_density(self, k: int, liquid: LiquidConfig) -> None:
        md = self.config.md
        thermo = self._folder(k) / liquid.name / "npt" / "thermo.csv"
        density, error = stage_average(thermo, "npt", "density_g_cm3")
        delta = density - liquid.density_g_cm3
        self.record["iterations"][k]["liquids"][liquid.name].update(
            temperature_K=liquid.temperature_K, density_g_cm3=_number(density),
            density_error_g_cm3=_number(error), experiment_g_cm3=liquid.density_g_cm3,
            experiment_source=liquid.density_source, delta_g_cm3=delta,
            npt_ps=md.npt_steps * md.timestep_fs / 1000.0)
        self._log(f"  {liquid.name}: ρ_model {density:.4f} ± {error:.4f} g/cm³, ρ_exp {liquid.density_g_cm3:.4f}, "
                  f"Δρ {delta:+.4f}")

    def _fixed_compressibility(self, liquid: LiquidConfig) -> float | None:
        return liquid.compressibility_per_bar or self.config.compressibility.per_bar

    def _kappa_jobs(self, k: int, liquid: LiquidConfig) -> list:
        cfg = self.config.compressibility
        if self._fixed_compressibility(liquid) is not None:
            return []
        out = []
        for name, sign in (("kappa_low", -1.0), ("kappa_high", 1.0)):
            density = liquid.density_g_cm3 * (1.0 + sign * cfg.strain)
            source = self._scaled_start(k, liquid, density, f"{name}_start")
            self._log(f"iteration {k}, {liquid.name}: NVT at {density:.4f} g/cm³ for κ_T, {cfg.steps} steps")
            out.append(self._md_job(self._folder(k) / liquid.name / name, self._model_of(k), source,
                                    [self._nvt_stage(liquid, cfg.steps)], cfg.steps))
        return out

    def _collect_kappa(self, k: int, liquid: LiquidConfig) -> None:
        cfg = self.config.compressibility
        entry = self.record["iterations"][k]["liquids"][liquid.name]
        fixed = self._fixed_compressibility(liquid)
        if fixed is not None:
            entry.update(compressibility_per_bar=fixed, compressibility_source="config")
        else:
            (p_low, e_low), (p_high, e_high) = (
                stage_average(self._folder(k) / liquid.name / name / "thermo.csv", "nvt", "P_bar")
                for name in ("kappa_low", "kappa_high"))
            estimate = finite_difference_compressibility(p_low, p_high, cfg.strain)
            error = (abs(estimate) * math.hypot(e_low, e_high) / abs(p_high - p_low)
                     if p_high != p_low else math.nan)
            value, note = clamp_compressibility(estimate, cfg.min_per_bar, cfg.max_per_bar)
            if note:
                self._warn(f"warning: iteration {k}, {liquid.name}: {note}")
            entry.update(compressibility_per_bar=value, compressibility_source="finite_difference",
                         compressibility_estimate_per_bar=_number(estimate),
                         compressibility_error_per_bar=_number(error), compressibility_note=note,
                         pressure_low_bar=_number(p_low), pressure_high_bar=_number(p_high))
        correction = pressure_correction_bar(entry["density_g_cm3"], liquid.density_g_cm3,
                                             entry["compressibility_per_bar"])
        self._add_correction(k, liquid, correction)

    def _add_correction(self, k: int, liquid: LiquidConfig, correction: float) -> None:
        entry = self.record["iterations"][k]["liquids"][liquid.name]
        previous = self.record["iterations"][k - 1]["liquids"][liquid.name] if k else {}
        entry.update(pressure_correction_bar=correction,
                     total_correction_bar=previous.get("total_correction_bar", 0.0) + correction)
        self._log(f"  {liquid.name}: κ_T {entry['compressibility_per_bar']:.3g} 1/bar "
                  f"({entry['compressibility_source']}), ΔP {correction:+.0f} bar, "
                  f"total {entry['total_correction_bar']:+.0f} bar")

    def _density_nvt_jobs(self, k: int, liquid: LiquidConfig) -> list:
        md = self.config.md
        source = self._scaled_start(k, liquid, liquid.density_g_cm3, "anchor_start")
        self._log(f"iteration {k}, {liquid.name}: NVT at ρ_exp for anchors, {md.nvt_steps} steps")
        return [self._md_job(self._folder(k) / liquid.name / "anchor_nvt", self._model_of(k), source,
                             [self._nvt_stage(liquid, md.nvt_steps)], self._anchor_every())]

    def _anchor_every(self) -> int:
        md = self.config.md
        return max(1, (md.nvt_steps - md.nvt_steps // 2) // md.frames)

    # pressure correction: the pressure of the NVT run at ρ_exp
    def _pressure_nvt_jobs(self, k: int, liquid: LiquidConfig) -> list:
        md = self.config.md
        stages = [self._nvt_stage(liquid, md.nvt_steps)]
        if k > 0:
            source = {"structure": str(self._folder(k - 1) / liquid.name / "anchor_nvt" / "final.extxyz")}
        elif liquid.system is not None:
            source = {"system": {**liquid.system.model_dump(mode="json"), "density": liquid.density_g_cm3}}
            stages = self._minimise_stages() + stages
        else:
            start = self._folder(k) / liquid.name / "anchor_start.extxyz"
            start.parent.mkdir(parents=True, exist_ok=True)
            ase.io.write(start, scale_to_density(ase.io.read(liquid.structure), liquid.density_g_cm3),
                         format="extxyz")
            source = {"structure": str(start)}
            stages = self._minimise_stages() + stages
        self._log(f"iteration {k}, {liquid.name}: NVT at ρ_exp {liquid.density_g_cm3:.4f} g/cm³, "
                  f"{md.nvt_steps} steps")
        return [self._md_job(self._folder(k) / liquid.name / "anchor_nvt", self._model_of(k), source, stages,
                             self._anchor_every())]

    def _collect_pressure(self, k: int, liquid: LiquidConfig) -> None:
        md = self.config.md
        entry = self.record["iterations"][k]["liquids"][liquid.name]
        pressure, error = self._record_nvt_pressure(k, liquid)
        kappa = self._fixed_compressibility(liquid)
        correction = md.pressure_bar - pressure
        entry.update(temperature_K=liquid.temperature_K, experiment_g_cm3=liquid.density_g_cm3,
                     experiment_source=liquid.density_source, compressibility_per_bar=kappa,
                     compressibility_source="config",
                     delta_estimated_g_cm3=estimated_density_error(correction, liquid.density_g_cm3, kappa),
                     delta_estimated_error_g_cm3=_number(liquid.density_g_cm3 * kappa * error),
                     nvt_ps=md.nvt_steps * md.timestep_fs / 1000.0)
        self._log(f"  {liquid.name}: P(ρ_exp) {pressure:+.0f} ± {error:.0f} bar, "
                  f"Δρ ≈ {entry['delta_estimated_g_cm3']:+.4f} g/cm³")
        self._add_correction(k, liquid, correction)

    def _record_nvt_pressure(self, k: int, liquid: LiquidConfig) -> tuple[float, float]:
        """The mean pressure (bar, second half) of the NVT run at ρ_exp with its error, recorded in the entry."""
        pressure, error = stage_average(self._folder(k) / liquid.name / "anchor_nvt" / "thermo.csv", "nvt", "P_bar")
        self.record["iterations"][k]["liquids"][liquid.name].update(
            pressure_at_experiment_bar=_number(pressure), pressure_at_experiment_error_bar=_number(error))
        return pressure, error

    # anchors and the final NPT check
    def _label_anchors(self, k: int, liquid: LiquidConfig) -> None:
        md = self.config.md
        entry = self.record["iterations"][k]["liquids"][liquid.name]
        directory = self._folder(k) / liquid.name / "anchor_nvt"
        if "pressure_at_experiment_bar" not in entry:  # density mode; the pressure mode measured it already
            self._record_nvt_pressure(k, liquid)
        trajectory = [f for f in ase.io.read(directory / "trajectory.extxyz", index=":")
                      if f.info.get("stage") == "nvt"]
        second_half = trajectory[len(trajectory) // 2:]
        picks = np.unique(np.linspace(0, len(second_half) - 1, min(md.frames, len(second_half)))
                          .round().astype(int))
        if len(picks) < 2:
            raise ConfigError(f"md.nvt_steps: {md.nvt_steps} steps give {len(picks)} anchor frame(s) of "
                              f"{liquid.name}; at least 2 are needed (one is held out for validation): run more "
                              "steps")
        total = entry["total_correction_bar"]
        frames = [self._anchor_frame(second_half[i], total, liquid.name, k) for i in picks]
        ase.io.write(self._folder(k) / liquid.name / "anchors.extxyz", frames, format="extxyz")
        entry.update(anchor_frames=len(frames))
        self._log(f"  {liquid.name}: {len(frames)} anchor frames; model pressure at ρ_exp "
                  f"{_fmt(entry['pressure_at_experiment_bar'], '+.0f')} ± "
                  f"{_fmt(entry['pressure_at_experiment_error_bar'], '.0f')} bar")

    def _verify(self) -> None:
        """NPT of the aligned model per liquid from its iteration's NVT frame at ρ_exp: measured densities."""
        verification = self.record.setdefault(
            "verification", {"iteration": self.record["aligned_iteration"], "done": [], "liquids": {}})
        self._phase(verification, [("verify", self._verify_jobs, self._collect_verification)])
        measured = [abs(v["delta_g_cm3"]) for v in verification["liquids"].values()]
        verification["within_tolerance"] = max(measured) <= self.config.tolerance_g_cm3
        self._save()

    def _verify_jobs(self, liquid: LiquidConfig) -> list:
        md = self.config.md
        chosen = self.record["aligned_iteration"]
        source = {"structure": str(self._folder(chosen) / liquid.name / "anchor_nvt" / "final.extxyz")}
        self._log(f"verification, {liquid.name}: NPT with {ALIGNED_NAME}, {md.verify_steps} steps")
        return [self._md_job(self.run_dir / "verification" / liquid.name, str(self.run_dir / ALIGNED_NAME), source,
                             [self._npt_stage(liquid, md.verify_steps)], md.verify_steps)]

    def _collect_verification(self, liquid: LiquidConfig) -> None:
        md = self.config.md
        thermo = self.run_dir / "verification" / liquid.name / "thermo.csv"
        density, error = stage_average(thermo, "npt", "density_g_cm3")
        delta = density - liquid.density_g_cm3
        self.record["verification"]["liquids"][liquid.name] = {
            "temperature_K": liquid.temperature_K, "density_g_cm3": _number(density),
            "density_error_g_cm3": _number(error), "experiment_g_cm3": liquid.density_g_cm3, "delta_g_cm3": delta,
            "npt_ps": md.verify_steps * md.timestep_fs / 1000.0}
        self._log(f"  {liquid.name}: ρ {density:.4f} ± {error:.4f} g/cm³, Δρ {delta:+.4f}")

    def _anchor_frame(self, frame: Atoms, correction_bar: float, liquid: str, k: int) -> Atoms:
        """``frame`` labelled by the reference model, with the stress target lowered by ``correction_bar``."""
        if self._reference_calculator is None:
            from matsim.calculator import MatSimCalculator

            self._reference_calculator = MatSimCalculator(self.run_dir / _REFERENCE_NAME, device=self.config.device,
                                                          dtype=self.config.md.dtype)
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        for name in ("mol_id", "formal_charge"):
            if name in frame.arrays:
                atoms.arrays[name] = frame.arrays[name]
        atoms.info.update(charge=total_charge(frame), liquid=liquid, iteration=k, pressure_correction_bar=correction_bar)
        atoms.calc = self._reference_calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = shifted_stress(atoms.get_stress(voigt=False), correction_bar)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        return atoms

    # --- fine-tuning ---------------------------------------------------------------------------------------------
    def _replay_frames(self) -> list[Atoms]:
        replay = self.config.replay
        if replay is None:
            return []
        keys = DataKeys(energy=replay.energy_key, forces=replay.forces_key)
        frames = read_frames(replay.file)[: replay.max_frames]
        out = []
        for index, frame in enumerate(frames):
            found = frame_targets(frame, keys, ("energy", "forces"), source=replay.file, index=index)
            atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
            atoms.info.update(charge=total_charge(frame), replay=index)
            atoms.calc = SinglePointCalculator(atoms, energy=float(found["energy"]), forces=found["forces"])
            out.append(atoms)
        return out

    def _dataset(self, k: int) -> None:
        """Anchors (a seeded fraction of each liquid's held out for validation) and the replay frames."""
        rng = np.random.default_rng(self.config.seed + k)
        train, valid = [], []
        for liquid in self.config.liquids:
            frames = ase.io.read(self._folder(k) / liquid.name / "anchors.extxyz", index=":")
            n_valid = min(len(frames) - 1, max(1, round(self.config.finetune.valid_fraction * len(frames))))
            held = set(rng.choice(len(frames), n_valid, replace=False).tolist())
            train += [f for i, f in enumerate(frames) if i not in held]
            valid += [f for i, f in enumerate(frames) if i in held]
        replay = self._replay_frames()
        ase.io.write(self._folder(k) / "train.extxyz", train + replay, format="extxyz")
        ase.io.write(self._folder(k) / "valid.extxyz", valid, format="extxyz")
        self.record["iterations"][k].update(train_frames=len(train) + len(replay), valid_frames=len(valid),
                                            replay_frames=len(replay))

    def _finetune(self, k: int) -> None:
        ft = self.config.finetune
        folder = self._folder(k)
        iteration = self.record["iterations"][k]
        parent = folder / "parent.pt"
        dispersion = _without_dispersion(Path(iteration["model"]), parent)
        config = {
            "run_dir": "train", "seed": self.config.seed, "dtype": ft.dtype, "device": self.config.device,
            "model": {"init_from": str(parent), "refit_e0s": False},
            "data": {"train": "train.extxyz", "valid": "valid.extxyz", "keys": {"missing_targets": "skip"},
                     "cache": False},
            "loss": ft.loss.model_dump(),
            "optimizer": {"lr": ft.lr, "batch_size": ft.batch_size},
            "schedule": {"type": "cosine"},
            "training": {"max_epochs": ft.epochs, "ema_decay": ft.ema_decay, "progress": False,
                         "tensorboard": False, "num_threads": ft.num_threads},
        }
        path = folder / "train.yaml"
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
        train_config = load_train_config(path)
        self._log(f"iteration {k}: fine-tuning on {iteration['train_frames']} frames ({iteration['replay_frames']} "
                  f"replay), {ft.epochs} epochs → {folder / 'train'}")
        trainer = Trainer(train_config, resume=(folder / "train" / RESUME_FILE).exists(), console=self.console)
        try:
            errors = trainer.fit()
        finally:
            trainer.close()
        corrections = {name: entry["total_correction_bar"] for name, entry in iteration["liquids"].items()}
        metadata = {"alignment": {"iteration": k, "run_dir": str(self.run_dir), "total_correction_bar": corrections},
                    "dispersion_at_inference": dispersion}
        caveat = load_checkpoint(self.original).metadata.get("caveat")
        if caveat:
            metadata["caveat"] = caveat
        _with_dispersion(folder / "train" / "best.pt", folder / "model.pt", dispersion, metadata)
        iteration.update(finetuned_model=str(folder / "model.pt"), errors=errors.get("validation"))


# ---------------------------------------------------------------------------------------------------------------
# report and entry points
# ---------------------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "–"


def summary_markdown(record: dict[str, Any]) -> str:
    """The alignment record as markdown: one row per iteration and liquid, then the verification NPT (if any)."""
    lines = [f"# Density alignment: {record['config']['model']}", "",
             f"Status: **{record['status']}**; correction from the {record['config'].get('correction', 'density')}; "
             f"tolerance {record['config']['tolerance_g_cm3']} g/cm³; aligned model: "
             f"{record.get('aligned_model') or '–'} (iteration {_fmt(record.get('aligned_iteration'), 'd')}).", "",
             "| iteration | liquid | T (K) | ρ model (g/cm³) | ρ exp (g/cm³) | Δρ (g/cm³) | Δρ est. from P (g/cm³) | "
             "κ_T (1/bar) | ΔP (bar) | ΔP total (bar) | P at ρ exp (bar) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for it in record["iterations"]:
        for name, v in it["liquids"].items():
            if "density_g_cm3" not in v and "delta_estimated_g_cm3" not in v:
                continue
            density = (f"{_fmt(v['density_g_cm3'], '.4f')} ± {_fmt(v.get('density_error_g_cm3'), '.4f')}"
                       if "density_g_cm3" in v else "–")
            estimate = (f"{_fmt(v['delta_estimated_g_cm3'], '+.4f')} ± "
                        f"{_fmt(v.get('delta_estimated_error_g_cm3'), '.4f')}" if "delta_estimated_g_cm3" in v else "–")
            pressure = (f"{_fmt(v.get('pressure_at_experiment_bar'), '+.0f')} ± "
                        f"{_fmt(v.get('pressure_at_experiment_error_bar'), '.0f')}")
            lines.append(f"| {it['iteration']} | {name} | {_fmt(v.get('temperature_K'), '.2f')} | {density} | "
                         f"{_fmt(v.get('experiment_g_cm3'), '.4f')} | {_fmt(v.get('delta_g_cm3'), '+.4f')} | "
                         f"{estimate} | {_fmt(v.get('compressibility_per_bar'), '.3g')} | "
                         f"{_fmt(v.get('pressure_correction_bar'), '+.0f')} | "
                         f"{_fmt(v.get('total_correction_bar'), '+.0f')} | {pressure} |")
    verification = record.get("verification")
    if verification and verification["liquids"]:
        lines += ["", f"NPT of the aligned model (iteration {verification['iteration']}), the density the mean of "
                      "the second half:", "", "| liquid | NPT (ps) | ρ model (g/cm³) | ρ exp (g/cm³) | Δρ (g/cm³) |",
                  "|---|---|---|---|---|"]
        for name, v in verification["liquids"].items():
            lines.append(f"| {name} | {_fmt(v['npt_ps'], '.1f')} | {_fmt(v['density_g_cm3'], '.4f')} ± "
                         f"{_fmt(v.get('density_error_g_cm3'), '.4f')} | {_fmt(v['experiment_g_cm3'], '.4f')} | "
                         f"{_fmt(v['delta_g_cm3'], '+.4f')} |")
    return "\n".join(lines) + "\n"


def align(config: AlignConfig, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the alignment of ``config``; returns the record of ``alignment.json``."""
    return Aligner(config, resume=resume, console=console).run()


def align_from_file(config_path: str | Path, resume: bool = False, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load an alignment YAML (with ``key.path=value`` overrides) and run it; the body of ``matsim train align``."""
    return align(load_align_config(config_path, overrides), resume=resume)
