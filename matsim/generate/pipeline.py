"""``matsim generate``: sample crystals from a checkpoint, write one CIF per sample, score them, write metrics.json.

Samples come from a :class:`SampleSource`: :class:`ModelSource` (a generative checkpoint, ``checkpoint:``) or
:class:`RandomSearchSource` (the random-structure-search baseline, ``baseline: random_search``, see
:mod:`matsim.generate.random_search`). Everything after sampling (CIFs, metrics.json, scoring, the hull with the
same oracle and relaxation settings) is the same for both, so baseline and models are compared on the same numbers.

What a run writes in the output folder:

- ``structures/000000.cif``, ``000001.cif``, ...: sample i as ``{i:06d}.cif``, written batch by batch as sampling
  goes (an interrupted run keeps what it made). A sample that failed to decode gets no file but keeps its number
  and counts as invalid in every metric.
- ``metrics.json``: written after sampling (model, checkpoint, sampler settings, seed, wall time, structures/s,
  device, versions) and rewritten with the scores (:func:`matsim.metrics.crystal.evaluate_crystals`: validity,
  coverage, EMDs, uniqueness, novelty, with the thresholds the metrics module records) and, with an oracle, hull
  stability (:func:`matsim.metrics.hull.hull_stability`) with the yield per 1,000 candidates
  (:func:`matsim.metrics.hull.per_thousand_candidates`: ``stable_per_1000_<t>``, ``sun_per_1000_<t>``, failed and
  invalid candidates in the denominator). ``checkpoint`` describes a model run and ``baseline`` a baseline run
  (the other is ``null``); a baseline records its failures (candidate number, composition, reason).

Reference and test sets are read through :class:`~matsim.datasets.crystals.CrystalDataset` (parsed once, cached),
in CDVAE's canonical cell; the metrics do not depend on the cell choice (fingerprints and StructureMatcher are
invariant to it).
"""

from __future__ import annotations

import functools
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from pymatgen.core import Composition, Structure

from matsim.core.config import validate_config
from matsim.core.errors import ConfigError, InputFileError
from matsim.core.io import atomic_write_text
from matsim.datasets.crystals import CrystalDataset
from matsim.datasets.graphs import file_digest
from matsim.generate.config import GenerateConfig, ScoreSection, load_generate_config
from matsim.generate.random_search import (RandomCandidate, RandomSearchSettings, cell_composition,
                                           check_compositions, dataset_compositions, draw_compositions,
                                           random_structures)
from matsim.models import load_model
from matsim.models.generative import GenerativeModel

__all__ = ["ModelSource", "RandomSearchSource", "SampleSource", "generate", "generate_from_file", "open_source",
           "sample_structures", "score_structures"]


class SampleSource(Protocol):
    """Where the samples of a run come from: a model or a baseline.

    ``label`` names it on the console; ``device`` is the hardware it samples on (recorded); ``settings`` are its
    validated sampler settings (recorded). :meth:`sample` returns the next ``count`` samples in run order (``None``
    for a failed one) and :meth:`record` the ``checkpoint`` and ``baseline`` sections of metrics.json.
    """

    label: str
    device: str
    settings: dict[str, Any]

    def sample(self, count: int) -> list[Structure | None]: ...

    def record(self) -> dict[str, Any]: ...


@dataclass
class ModelSource:
    """Samples of a generative checkpoint: ``model.sample`` with one seeded generator on the model's device."""

    model: GenerativeModel
    checkpoint: Path
    settings: dict[str, Any]
    condition: dict[str, Any] | None
    seed: int
    plan: list[Composition] | None = None
    origin: dict[str, Any] | None = None
    drawn: int = 0

    def __post_init__(self) -> None:
        self._device = next(self.model.parameters()).device
        self._generator = torch.Generator(device=self._device).manual_seed(self.seed)
        self.label = f"{self.checkpoint} on {self._device}"
        self.device = _device_name(self._device)

    def sample(self, count: int) -> list[Structure | None]:
        """The next ``count`` samples (the CUDA stream is synchronised, so timing around this call is model time)."""
        condition = self.condition
        if self.plan is not None:  # sample i is conditioned on plan entry i
            cells = self.plan[self.drawn:self.drawn + count]
            condition = (condition or {}) | {"composition": [c.formula for c in cells]}
            self.drawn += count
        batch = self.model.sample(count, condition=condition, generator=self._generator, **self.settings)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return batch

    def record(self) -> dict[str, Any]:
        """The checkpoint's path, SHA-256, model class, epoch and kind."""
        metadata = getattr(self.model, "metadata", {})
        return {"checkpoint": {"path": str(self.checkpoint), "sha256": file_digest(self.checkpoint),
                               "model": type(self.model).__name__, "epoch": metadata.get("epoch"),
                               "kind": metadata.get("kind")},
                "baseline": None} | ({"compositions": self.origin} if self.origin is not None else {})


@dataclass
class RandomSearchSource:
    """Random symmetric crystals (pyxtal) of a planned composition per candidate, one random stream per candidate
    (:func:`matsim.generate.random_search.random_structures`); ``origin`` says where the compositions came from."""

    plan: list[Composition]
    options: RandomSearchSettings
    seed: int
    origin: dict[str, Any]
    candidates: list[RandomCandidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = self.options.model_dump()
        self.label = f"random structure search (pyxtal, {len({c.formula for c in self.plan})} compositions)"
        self.device = f"cpu ({platform.processor() or platform.machine()}, 1 process)"

    def sample(self, count: int) -> list[Structure | None]:
        """The next ``count`` candidates of the plan."""
        start = len(self.candidates)
        batch = random_structures(self.plan[start:start + count], self.seed, self.options, start=start)
        self.candidates += batch
        return [c.structure for c in batch]

    def record(self) -> dict[str, Any]:
        """The baseline's composition source, pyxtal version, attempts, space groups used and every failure."""
        made = [c for c in self.candidates if c.structure is not None]
        groups: dict[int, int] = {}
        for c in made:
            groups[c.space_group] = groups.get(c.space_group, 0) + 1
        try:
            pyxtal_version = version("pyxtal")
        except PackageNotFoundError:
            pyxtal_version = "not installed"
        return {"checkpoint": None,
                "baseline": {"name": "random_search", "pyxtal": pyxtal_version, "compositions": self.origin,
                             "n_candidates": len(self.candidates), "n_failed": len(self.candidates) - len(made),
                             "mean_attempts": (sum(c.attempts for c in self.candidates) / len(self.candidates)
                                               if self.candidates else None),
                             "space_groups": {str(g): n for g, n in sorted(groups.items())},
                             "failures": [{"index": i, "composition": c.composition.formula, "error": c.error}
                                          for i, c in enumerate(self.candidates) if c.structure is None]}}


def open_source(config: GenerateConfig, source: str = "config") -> SampleSource:
    """The sample source of ``config``: its checkpoint loaded and checked (sampler settings, condition), or its
    baseline with the compositions read and checked; a :class:`ConfigError` naming ``source`` for a bad value."""
    if config.baseline == "random_search":
        return _random_search_source(config, source)
    model = load_model(config.checkpoint, device=config.device)
    if not isinstance(model, GenerativeModel):
        raise ConfigError(f"checkpoint {config.checkpoint} holds {type(model).__name__}, not a generative model")
    settings = validate_config(model.sampler_settings, config.sampler, source=f"{source}: sampler")
    plan, origin = None, None
    try:
        model.check_condition(config.condition)
        if config.compositions is not None or config.compositions_from is not None:
            if "composition" not in model.condition_keys:
                raise ConfigError(f"{type(model).__name__} takes no composition condition, so no 'compositions' / "
                                  "'compositions_from' plan")
            plan, origin = _composition_plan(config, _read_cells, source)
            model.check_condition({"composition": list(dict.fromkeys(c.formula for c in plan))})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return ModelSource(model, config.checkpoint, settings.model_dump(), config.condition, config.seed, plan, origin)


def _random_search_source(config: GenerateConfig, source: str) -> RandomSearchSource:
    """The baseline's candidate plan: ``num_samples`` cell compositions, drawn or cycled, each checked once."""
    settings = validate_config(RandomSearchSettings, config.sampler, source=f"{source}: sampler")
    try:
        if config.seed < 0:
            raise ConfigError(f"seed must be ≥ 0 for the random-search baseline, got {config.seed}")
        plan, origin = _composition_plan(config, functools.partial(check_compositions, settings=settings), source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return RandomSearchSource(plan, settings, config.seed, origin)


def _read_cells(specs: list) -> list[Composition]:
    """Cell compositions of formulas or (formula, formula units) pairs (a model checks them itself)."""
    return [cell_composition(spec) for spec in specs]


def _composition_plan(config: GenerateConfig, check: Callable[[list], list[Composition]],
                      source: str) -> tuple[list[Composition], dict[str, Any]]:
    """``num_samples`` cell compositions drawn from ``compositions_from`` (uniformly with replacement, seeded) or
    cycled through ``compositions``, and a record of where they came from; ``check`` reads and checks formulas."""
    if config.compositions_from is not None:
        if not config.compositions_from.is_file():
            raise InputFileError(f"{source}: compositions_from: file not found: {config.compositions_from}")
        pool = dataset_compositions(config.compositions_from)
        check(list(dict.fromkeys(pool)))
        plan = draw_compositions(pool, config.num_samples, config.seed)
        return plan, {"from": str(config.compositions_from), "sha256": file_digest(config.compositions_from),
                      "n_crystals": len(pool), "n_distinct": len(set(pool)), "drawn": "uniformly with replacement"}
    given = check([c if isinstance(c, str) else (c.formula, c.formula_units) for c in config.compositions])
    plan = [given[i % len(given)] for i in range(config.num_samples)]
    return plan, {"given": [c.formula for c in given], "assigned": "candidate i takes entry i mod len"}


def generate(config: GenerateConfig, output: str | Path, console: Any = None, source: str = "config") -> dict[str, Any]:
    """Run a generation config into ``output`` (see the module docstring); returns the metrics.json content."""
    from rich.console import Console

    console = console or Console()
    output = Path(output)
    structures_dir = output / "structures"
    if (output / "metrics.json").exists() or (structures_dir.is_dir() and any(structures_dir.glob("*.cif"))):
        raise ConfigError(f"--output {output} already holds generated samples; choose another folder")
    sampler = open_source(config, source)
    if config.score is not None:
        for path in (config.score.reference, config.score.test):
            if path is not None and not path.is_file():
                raise InputFileError(f"{source}: score: file not found: {path}")

    console.print(f"[bold]matsim generate[/bold] {config.num_samples} samples from {sampler.label} → {output}")
    structures_dir.mkdir(parents=True, exist_ok=True)
    samples, wall = sample_structures(sampler, config.num_samples, config.batch_size, structures_dir, console)
    result: dict[str, Any] = {
        "n_requested": config.num_samples,
        "n_written": sum(s is not None for s in samples),
        "n_failed": sum(s is None for s in samples),
        "sampling": {
            "wall_time_s": wall,
            "structures_per_s": len(samples) / wall if wall > 0 else None,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "settings": sampler.settings,
            "condition": config.condition,
            "device": sampler.device,
        },
        **sampler.record(),
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


def sample_structures(sampler: SampleSource, num_samples: int, batch_size: int, structures_dir: Path,
                      console: Any) -> tuple[list[Structure | None], float]:
    """Draw ``num_samples`` structures from ``sampler`` in batches of ``batch_size``, writing each one that exists
    as ``structures_dir/{i:06d}.cif`` as it goes. Returns the samples (``None`` = failed, kept in place) and the
    sampling wall time in s (sampler time only, CIF writing excluded)."""
    samples: list[Structure | None] = []
    wall = 0.0
    while len(samples) < num_samples:
        count = min(batch_size, num_samples - len(samples))
        t0 = time.perf_counter()
        batch = sampler.sample(count)
        wall += time.perf_counter() - t0
        for structure in batch:
            if structure is not None:
                _write_cif(structure, structures_dir / f"{len(samples):06d}.cif")
            samples.append(structure)
        console.print(f"  sampled {len(samples)}/{num_samples} in {wall:.1f} s", highlight=False)
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
        from matsim.metrics.hull import chgnet_calculator, hull_stability, per_thousand_candidates

        stability = hull_stability(samples, chgnet_calculator(), known=training,
                                   evaluate=[f.struct_valid for f in metrics.samples],
                                   unique=[f.unique for f in metrics.samples],
                                   novel=[bool(f.novel) for f in metrics.samples])
        result |= {k: v for k, v in stability.to_dict().items() if k != "n"}
        result |= per_thousand_candidates(stability.e_above_hull, n_candidates=len(samples),
                                          unique=[f.unique for f in metrics.samples],
                                          novel=[bool(f.novel) for f in metrics.samples])
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
        shown += [(k, v) for k, v in metrics.items() if k.startswith(("stable_per_1000_", "sun_per_1000_"))]
        line += "; " + ", ".join(f"{k} {v:.4g}" for k, v in shown if isinstance(v, float))
    console.print(line, highlight=False)
