"""``matsim generate CONFIG.yaml --output DIR``: a thin typer command over :mod:`matsim.generate` (samples of a
generative checkpoint, or of a baseline such as ``baseline: random_search``)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["generate"]


def generate(
    config: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Generation config (YAML): checkpoint or baseline."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for structures/*.cif and metrics.json."),
    set: list[str] = typer.Option(  # noqa: A002 - the option is --set
        None, "--set", help="Override a config value: --set key.path=value (repeatable)."
    ),
) -> None:
    """Sample crystals from a generative checkpoint (or the random-search baseline), write one CIF per sample, score
    them into metrics.json."""
    from matsim.generate.pipeline import generate_from_file

    generate_from_file(config, output, overrides=list(set or ()))
