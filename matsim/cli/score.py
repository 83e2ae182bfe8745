"""``matsim score``: crystal metrics and convex-hull stability of generated structures.

``score`` is a plain function (usable from Python and tests); its typer wrapper lives in
:mod:`matsim.cli.score_command` (which imports this module, and with it pymatgen, only when the command runs),
registered by the app as ``matsim score DIR_OR_FILES --reference TRAIN.csv [--test TEST.csv] [--dataset ...]
[--oracle chgnet|CHECKPOINT|none] [--json] [--workers N]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from pymatgen.core import Structure

from matsim.core.errors import ConfigError, InputFileError
from matsim.metrics.crystal import COVERAGE_CUTOFFS, evaluate_crystals, read_structures
from matsim.metrics.hull import EnergyOracle, chgnet_calculator, hull_stability, per_thousand_candidates

CalculatorLoader = Callable[[Path], EnergyOracle]
ORACLE_NAMES = ("chgnet", "none")


def _load_oracle(spec: str, load_calculator: CalculatorLoader | None) -> EnergyOracle | None:
    """'none' -> no oracle, 'chgnet' -> CHGNet's pretrained calculator, else a checkpoint path for the hook."""
    if spec == "none":
        return None
    if spec == "chgnet":
        return chgnet_calculator()
    if load_calculator is None:
        raise ConfigError(f"--oracle '{spec}': expected one of {', '.join(ORACLE_NAMES)} (checkpoint oracles are not "
                          "available in this build)")
    path = Path(spec)
    if not path.is_file():
        raise InputFileError(f"--oracle checkpoint not found: {path}")
    return load_calculator(path)


def _read_set(path: Path, what: str) -> tuple[list[Structure], int]:
    """Structures of a reference/test file and the number of entries that could not be parsed."""
    structures = read_structures([path])
    parsed = [s for s in structures if s is not None]
    if not parsed:
        raise InputFileError(f"{what} {path}: no readable structure")
    return parsed, len(structures) - len(parsed)


def score(
    paths: Sequence[Path],
    reference: Path,
    test: Path | None = None,
    dataset: str | None = None,
    oracle: str = "none",
    json_output: bool = False,
    load_calculator: CalculatorLoader | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Score generated structures and print the result (one JSON object, or a table).

    Args:
        paths: files or directories of samples (CIF, extxyz/xyz, CSV with a ``cif`` column).
        reference: training set: novelty, known phases for the hull, and the distribution compared with when no
            test set is given.
        test: test set: the distribution for coverage/EMD (as CDVAE); if it has as many entries as there are
            samples, sample i is also matched against test entry i (match rate, RMSE).
        dataset: 'perov_5', 'carbon_24' or 'mp_20': CDVAE's coverage cutoffs (no coverage without it).
        oracle: 'chgnet', 'none', or a checkpoint path loaded through ``load_calculator``.
        json_output: print JSON instead of a table.
        load_calculator: hook turning a checkpoint path into an ASE calculator.
        workers: processes for the coverage fingerprints.

    Returns:
        The metrics as a flat JSON-serialisable dict; fractions are in [0, 1] over all samples.
    """
    if dataset is not None and dataset not in COVERAGE_CUTOFFS:
        raise ConfigError(f"--dataset '{dataset}': expected one of {', '.join(COVERAGE_CUTOFFS)}")
    calculator = _load_oracle(oracle, load_calculator)
    samples = read_structures(paths)
    training, n_bad_training = _read_set(reference, "--reference")
    test_set, n_bad_test = _read_set(test, "--test") if test is not None else (None, 0)
    aligned = test_set is not None and n_bad_test == 0 and len(test_set) == len(samples)

    metrics = evaluate_crystals(
        samples,
        reference=test_set if test_set is not None else training,
        training=training,
        ground_truth=test_set if aligned else None,
        dataset=dataset,
        workers=workers,
    )
    result: dict[str, Any] = metrics.to_dict()
    result["inputs"] = {
        "n_reference": len(training),
        "n_reference_unreadable": n_bad_training,
        "n_test": len(test_set) if test_set is not None else None,
        "n_test_unreadable": n_bad_test,
        "dataset": dataset,
        "oracle": oracle,
    }
    if calculator is not None:
        stability = hull_stability(
            samples,
            calculator,
            known=training,
            evaluate=[flags.struct_valid for flags in metrics.samples],
            unique=[flags.unique for flags in metrics.samples],
            novel=[bool(flags.novel) for flags in metrics.samples],
        )
        result |= {k: v for k, v in stability.to_dict().items() if k != "n"}
        result |= per_thousand_candidates(stability.e_above_hull, n_candidates=len(samples),
                                          unique=[flags.unique for flags in metrics.samples],
                                          novel=[bool(flags.novel) for flags in metrics.samples])
    _print(result, json_output)
    return result


def _print(result: dict[str, Any], json_output: bool) -> None:
    """One JSON object on stdout, or a rich table of the scalar metrics."""
    if json_output:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="matsim score")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, dict):
            continue
        table.add_row(key, "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
