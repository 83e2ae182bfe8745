"""The ``matsim`` command: a thin typer layer over the library.

User errors (:class:`~matsim.core.errors.MatsimError`) end in one line on stderr and a non-zero exit;
``matsim --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from matsim._version import __version__
from matsim.cli.data import data_app
from matsim.cli.generate import generate
from matsim.cli.info import info
from matsim.cli.md import md_app
from matsim.cli.score_command import score_command
from matsim.cli.spectra import elucidate, spectra_app
from matsim.cli.train import evaluate, train_app
from matsim.core.errors import MatsimError

app = typer.Typer(
    name="matsim",
    help="Machine-learned atomistic simulation: force fields, electrolyte MD, generative models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("info", help="Versions, devices and pretrained models available offline.")(info)
app.add_typer(data_app, name="data")
app.add_typer(md_app, name="md")
app.add_typer(train_app, name="train")
app.command("evaluate", help="Energy and force errors of a checkpoint on a data file.")(evaluate)
app.command("generate", help="Sample crystals from a generative checkpoint and score them.")(generate)
app.command("score", help="Validity, coverage, uniqueness, novelty and hull stability of crystal samples.")(score_command)
app.add_typer(spectra_app, name="spectra")
app.command("elucidate", help="Rank candidate structures (SMILES) for IR spectra.")(elucidate)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"matsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    """matsim: machine-learned atomistic simulation."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``matsim`` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="matsim")
    except MatsimError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
