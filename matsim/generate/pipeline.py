"""``matsim generate``: sample crystals from a checkpoint, write one CIF per sample, score them, write metrics.json.

What a run writes in the output folder:

- ``structures/000000.cif``, ``000001.cif``, ...: sample i as ``{i:06d}.cif``, written batch by batch as sampling
  goes (an interrupted run keeps what it made). A sample that failed to decode gets no file but keeps its number
  and counts as invalid in every metric.
- ``metrics.json``: written after sampling (model, checkpoint, sampler settings, seed, wall time, structures/s,
  device, versions) and rewritten with the scores (:func:`matsim.metrics.crystal.evaluate_crystals`: validity,
  coverage, EMDs, uniqueness, novelty, with the thresholds the metrics module records) and, with an oracle, hull
  stability (:func:`matsim.metrics.hull.hull_stability`).

Reference and test sets are read through :class:`~matsim.datasets.crystals.CrystalDataset` (parsed once, cached),
in CDVAE's canonical cell; the metrics do not depend on the cell choice (fingerprints and StructureMatcher are
invariant to it).
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Structure

from matsim.core.config import validate_config
from matsim.core.errors import ConfigError, InputFileError
from matsim.core.io import atomic_write_text
from matsim.datasets.crystals import CrystalDataset
from matsim.datasets.graphs import file_digest
from matsim.generate.config import GenerateConfig, ScoreSection, load_generate_config
from matsim.models import load_model
from matsim.models.generative import GenerativeModel

__all__ = ["generate", "generate_from_file", "sample_structures", "score_structures"]


def generate(config: GenerateConfig, output: str | Path, console: Any = None, source: str = "config") -> dict[str, Any]:
    """Run a generation config into ``output`` (see the module docstring); returns the metrics.json content."""
    from rich.console import Console

    console = console or Console()
    output = Path(output)
    structures_dir = output / "structures"
    if (output / "metrics.json").exists() or (structures_dir.is_dir() and any(structures_dir.glob("*.cif"))):
        raise ConfigError(f"--output {output} already holds generated samples; choose another folder")
    model = load_model(config.checkpoint, device=config.device)
    if not isinstance(model, GenerativeModel):
        raise ConfigError(f"checkpoint {config.checkpoint} holds {type(model).__name__}, not a generative model")
    settings = validate_config(model.sampler_settings, config.sampler, source=f"{source}: sampler")
    try:
        model.check_condition(config.condition)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    if config.score is not None:
        for path in (config.score.reference, config.score.test):
            if path is not None and not path.is_file():
                raise InputFileError(f"{source}: score: file not found: {path}")

    device = next(model.parameters()).device
    console.print(f"[bold]matsim generate[/bold] {config.num_samples} samples from {config.checkpoint} on {device} "
                  f"→ {output}")
    structures_dir.mkdir(parents=True, exist_ok=True)
    samples, wall = sample_structures(model, config, settings.model_dump(), structures_dir, console)
    metadata = getattr(model, "metadata", {})
    result: dict[str, Any] = {
        "n_requested": config.num_samples,
        "n_written": sum(s is not None for s in samples),
        "n_failed": sum(s is None for s in samples),
        "sampling": {
            "wall_time_s": wall,
            "structures_per_s": len(samples) / wall if wall > 0 else None,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "settings": settings.model_dump(),
            "condition": config.condition,
            "device": _device_name(device),
        },
        "checkpoint": {"path": str(config.checkpoint), "sha256": file_digest(config.checkpoint),
                       "model": type(model).__name__, "epoch": metadata.get("epoch"), "kind": metadata.get("kind")},
        "versions": _versions(),
    }
    atomic_write_text(output / "metrics.json", json.dumps(result, indent=1) + "\n")
    if config.score is not None:
        t0 = time.perf_counter()
        result["metrics"] = score_structures(samples, config.score)
        result["scoring_time_s"] = time.perf_counter() - t0
        atomic_write_text(output / "metrics.json", json.dumps(result, indent=1) + "\n")
    _report(result, console)
    return result


def sample_structures(model: GenerativeModel, config: GenerateConfig, settings: dict[str, Any],
                      structures_dir: Path, console: Any) -> tuple[list[Structure | None], float]:
    """Draw ``config.num_samples`` structures in batches (one seeded generator on the model's device), writing
    each parseable one as ``structures_dir/{i:06d}.cif``. Returns the samples and the sampling wall time in s
    (model time only, CIF writing excluded)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    samples: list[Structure | None] = []
    wall = 0.0
    while len(samples) < config.num_samples:
        count = min(config.batch_size, config.num_samples - len(samples))
        t0 = time.perf_counter()
        batch = model.sample(count, condition=config.condition, generator=generator, **settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall += time.perf_counter() - t0
        for structure in batch:
            if structure is not None:
                _write_cif(structure, structures_dir / f"{len(samples):06d}.cif")
            samples.append(structure)
        console.print(f"  sampled {len(samples)}/{config.num_samples} in {wall:.1f} s", highlight=False)
    return samples, wall


def score_structures(samples: list[Structure | None], score: ScoreSection) -> dict[str, Any]:
    """Crystal metrics (and hull stability with an oracle) of ``samples`` against the score section's sets."""
    from matsim.metrics.crystal import evaluate_crystals

    training = CrystalDataset.from_csv(score.reference).structures()
    test = CrystalDataset.from_csv(score.test).structures() if score.test is not None else None
    metrics = evaluate_crystals(samples, reference=test if test is not None else training, training=training,
                                dataset=score.dataset)
    result = metrics.to_dict()
    result["inputs"] = {"reference": str(score.reference), "n_reference": len(training), "test": str(score.test),
                        "n_test": None if test is None else len(test), "dataset": score.dataset,
                        "oracle": score.oracle}
    if score.oracle == "chgnet":
        from matsim.metrics.hull import chgnet_calculator, hull_stability

        stability = hull_stability(samples, chgnet_calculator(), known=training,
                                   evaluate=[f.struct_valid for f in metrics.samples],
                                   unique=[f.unique for f in metrics.samples],
                                   novel=[bool(f.novel) for f in metrics.samples])
        result |= {k: v for k, v in stability.to_dict().items() if k != "n"}
    return result


def generate_from_file(config_path: str | Path, output: str | Path,
                       overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a generation YAML (with overrides) and run it; the body of ``matsim generate``."""
    config = load_generate_config(config_path, overrides)
    return generate(config, output, source=str(config_path))


def _write_cif(structure: Structure, path: Path) -> None:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write_text(path, str(CifWriter(structure)))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    out = {}
    for package in ("matsim", "torch", "pymatgen", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _report(result: dict[str, Any], console: Any) -> None:
    sampling = result["sampling"]
    rate = sampling["structures_per_s"]
    line = (f"{result['n_requested']} samples ({result['n_failed']} failed) in {sampling['wall_time_s']:.1f} s"
            + (f" ({rate:.2f} structures/s)" if rate is not None else ""))
    metrics = result.get("metrics")
    if metrics:
        shown = [(k, metrics.get(k)) for k in ("validity", "struct_validity", "comp_validity", "cov_r", "cov_p",
                                               "emd_density", "emd_n_elements", "uniqueness", "novelty")]
        line += "; " + ", ".join(f"{k} {v:.4g}" for k, v in shown if isinstance(v, float))
    console.print(line, highlight=False)
