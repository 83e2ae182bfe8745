"""``matsim md``: run an MD config (build, minimise, equilibrate, produce, analyse; resumable) and re-analyse a run.

Register with ``app.add_typer(md_app, name="md")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["md_app"]

md_app = typer.Typer(
    help="Molecular dynamics: run a YAML config, resume it, analyse its output.", no_args_is_help=True,
    add_completion=False,
)


@md_app.callback()
def _md() -> None:
    """Molecular dynamics: run a YAML config, resume it, analyse its output."""


@md_app.command("run")
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="MD config (see examples/electrolyte.yaml)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output directory (default: runs/<config stem>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in DIR from its checkpoint."),
    overrides: list[str] | None = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                                               help="Override a config value, e.g. --set stages.2.steps=5000."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Build or read the box, run the stages, write thermo.csv, the trajectory and checkpoints, then analyse."""
    from matsim.md.config import load_md_config
    from matsim.md.runner import run_md

    config = load_md_config(config_path, list(overrides or []))
    directory = output or Path("runs") / config_path.stem
    result = run_md(config, directory, resume=resume, progress=False if no_progress else None,
                    log=lambda message: typer.echo(message, err=True))
    typer.echo(f"{directory}: {result.steps} steps, {result.time_fs / 1000:.3f} ps simulated")
    for timing in result.timings:
        rate = f", {timing['ns_per_day']:.3g} ns/day" if timing.get("ns_per_day") else ""
        steps_per_s = timing.get("steps_per_s") or 0.0
        typer.echo(f"  {timing['stage']}: {timing['steps']} steps in {timing['wall_s']:.1f} s "
                   f"({steps_per_s:.3g} steps/s{rate})")
    if result.analysis is not None:
        if "error" in result.analysis:
            typer.echo(f"warning: analysis skipped: {result.analysis['error']} "
                       f"(fix and re-run: matsim md analyze {directory} --set analysis.KEY=VALUE)", err=True)
        else:
            typer.echo(f"  analysis: {directory / 'analysis.json'}, plots in {directory / 'plots'}")
            for warning in result.analysis.get("warnings", []):
                typer.echo(f"warning: {warning}", err=True)


@md_app.command("analyze")
def analyze(
    directory: Path = typer.Argument(..., metavar="DIR", help="Output directory of 'matsim md run'."),
    overrides: list[str] | None = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                                               help="Override an analysis setting, e.g. --set analysis.skip_fs=500."),
) -> None:
    """Re-run the analysis of a run directory: analysis.json and plots/*.png."""
    from matsim.core.errors import InputFileError
    from matsim.md.runner import analyze_output

    if not directory.is_dir():
        raise InputFileError(f"run directory not found: {directory}")
    summary = analyze_output(directory, overrides=tuple(overrides or []))
    typer.echo(json.dumps(summary, indent=2))
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
