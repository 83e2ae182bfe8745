"""``matsim data``: dataset commands (``label``: reference energies, forces, charges and dipoles for extxyz frames)."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from matsim.reference.labeller import METHOD_NAMES, ReferenceMethod, label_file

__all__ = ["data_app"]

data_app = typer.Typer(
    help="Datasets: label frames with reference methods (GFN-xTB, DFT).", no_args_is_help=True, add_completion=False
)

#: The labeller's methods as a typer choice.
Method = enum.Enum("Method", {name: name for name in METHOD_NAMES}, type=str)


@data_app.callback()
def _data() -> None:
    """Datasets: label frames with reference methods (GFN-xTB, DFT)."""


@data_app.command("label")
def label(
    input_path: Path = typer.Argument(..., metavar="IN.xyz", help="extxyz file (or ASE database) of frames to label."),
    method: Method = typer.Option(..., "--method", help="Reference method."),
    output: Path = typer.Option(..., "--output", "-o", help="Labelled extxyz file (resumed if it exists)."),
    xc: str = typer.Option("b3lyp", "--xc", help="Exchange-correlation functional (dft only)."),
    basis: str = typer.Option("def2-SVP", "--basis", help="Basis set (dft only)."),
    workers: int | None = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
    max_scf_cycles: int | None = typer.Option(
        None, "--max-scf-cycles", help="SCF iteration limit (default: the method's own)."
    ),
) -> None:
    """Label the frames of IN.xyz with energies (eV), forces (eV/Å), charges (e) and dipoles (e·Å).

    Frames already in the output are skipped; frames whose SCF does not converge are reported and left out.
    """
    reference = ReferenceMethod(method.value, xc=xc, basis=basis, max_scf_cycles=max_scf_cycles)
    summary = label_file(input_path, output, reference, n_workers=workers)
    typer.echo(f"{summary.output}: labelled {summary.done}, skipped {summary.skipped} (already done), "
               f"failed {len(summary.failed)}")
    for frame_id, reason in sorted(summary.failed.items()):
        typer.echo(f"  frame {frame_id} left out: {reason}")
