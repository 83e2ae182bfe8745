"""The typer wrapper of ``matsim score`` (:func:`matsim.cli.score.score`).

Kept apart so that the ``matsim`` command starts without importing pymatgen and the crystal metrics: other
commands (``md``, ``data``, ``train``) run where those are not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["score_command"]


def score_command(
    paths: Annotated[list[Path], typer.Argument(help="Generated structures: directories or CIF/extxyz/CSV files.")],
    reference: Annotated[
        Path, typer.Option("--reference", help="Training set (CSV with a 'cif' column, CIF, extxyz).")
    ],
    test: Annotated[
        Path | None, typer.Option("--test", help="Test set: reference distribution; aligned 1:1 -> match rate.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="perov_5 | carbon_24 | mp_20 (CDVAE coverage cutoffs).")
    ] = None,
    oracle: Annotated[str, typer.Option("--oracle", help="chgnet | CHECKPOINT | none (hull stability).")] = "none",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes for the coverage fingerprints.")] = 1,
) -> None:
    """Validity, coverage, EMDs, uniqueness, novelty and (with an oracle) hull stability and S.U.N."""
    from matsim.calculator import MatSimCalculator
    from matsim.cli.score import score

    score(paths, reference, test=test, dataset=dataset, oracle=oracle, json_output=json_output,
          load_calculator=MatSimCalculator, workers=workers)
