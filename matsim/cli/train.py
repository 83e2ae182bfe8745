"""``matsim train [align|distill] CONFIG.yaml`` and ``matsim evaluate CHECKPOINT DATA.xyz``: thin typer commands over
matsim.train.

``matsim train CONFIG.yaml`` trains (a potential, or a generative model); ``matsim train align CONFIG.yaml`` aligns
a potential's liquid densities to experiment (:mod:`matsim.train.align`); ``matsim train distill CONFIG.yaml``
distils (:mod:`matsim.train.distill`). All three take ``--resume`` and ``--set key.path=value``. ``train_app`` is the
group: a first argument that is not a subcommand name goes to the default command (``fit``), so a config file is
never mistaken for a subcommand unless it is literally named ``align``, ``distill`` or ``fit`` (write ``./align``).

Multi-GPU: the same command under ``torchrun --no-python --nproc_per_node=N matsim train CONFIG.yaml`` trains
with DDP (one process per GPU); several nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint``.
"""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["train", "align", "distill", "evaluate", "train_app"]

#: The subcommand that ``matsim train CONFIG.yaml`` runs.
DEFAULT_COMMAND = "fit"


class _DefaultCommandGroup(TyperGroup):
    """A command group that runs :data:`DEFAULT_COMMAND` when the first argument names no subcommand (and is not
    ``--help``): ``matsim train CONFIG.yaml --resume`` is ``matsim train fit CONFIG.yaml --resume``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


_CONFIG = typer.Argument(..., metavar="CONFIG.yaml", help="Config (YAML).")
_RESUME = typer.Option(False, "--resume", help="Continue the run in the config's run_dir.")
_SET = typer.Option(None, "--set", help="Override a config value: --set key.path=value (repeatable).")


def train(
    config: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Training config (YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the config's run_dir exactly."),
    set: list[str] = typer.Option(  # noqa: A002 - the option is --set
        None, "--set", help="Override a config value: --set key.path=value (repeatable)."
    ),
) -> None:
    """Train a potential (data statistics into the model, EMA, checkpoints, metrics log, final error table) or,
    when the config's model is generative (e.g. cdvae), a generative model.

    Under torchrun (WORLD_SIZE > 1) the same command trains potentials with DistributedDataParallel.
    """
    from matsim.train.generative_config import is_generative_config

    overrides = list(set or ())
    if is_generative_config(config, overrides):
        from matsim.train.generative import train_generative_from_file

        train_generative_from_file(config, resume=resume, overrides=overrides)
    else:
        from matsim.train.trainer import train_from_file

        train_from_file(config, resume=resume, overrides=overrides)


def align(config: Path = _CONFIG, resume: bool = _RESUME, set: list[str] = _SET) -> None:  # noqa: A002
    """Align a potential's liquid densities to experiment: NPT densities, pressure corrections from the density
    errors and compressibilities, fine-tuning on anchors and DFT replay, until every |Δρ| is within tolerance."""
    from matsim.train.align import align_from_file

    align_from_file(config, resume=resume, overrides=list(set or ()))


def distill(config: Path = _CONFIG, resume: bool = _RESUME, set: list[str] = _SET) -> None:  # noqa: A002
    """Distil a teacher (ensemble) into a student potential."""
    from matsim.train.distill import distill_from_file

    distill_from_file(config, resume=resume, overrides=list(set or ()))


def evaluate(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="Model checkpoint (.pt) or pretrained name."),
    data: Path = typer.Argument(..., metavar="DATA.xyz", help="Labelled frames (extxyz or ASE db)."),
    energy_key: str = typer.Option("energy", "--energy-key", help="Key of the reference energies."),
    forces_key: str = typer.Option("forces", "--forces-key", help="Key of the reference forces."),
    json: bool = typer.Option(False, "--json", help="Print one JSON object (with per-structure energy errors)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Frames per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    no_dispersion: bool = typer.Option(False, "--no-dispersion", help="Switch the model's dispersion term off "
                                                                        "(reference data without dispersion)."),
) -> None:
    """Energy MAE/RMSE (per atom, per structure) and force MAE/RMSE of a checkpoint on labelled frames."""
    from matsim.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, energy_key=energy_key, forces_key=forces_key,
                                 batch_size=batch_size, device=device, per_structure=True,
                                 dispersion=not no_dispersion)
    if json:
        typer.echo(json_module.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{checkpoint} on {data} ({result['n_structures']} structures)")
    table.add_column("quantity")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    table.add_row("energy per atom (meV/atom)", f"{result['energy_mae_meV_per_atom']:.3f}",
                  f"{result['energy_rmse_meV_per_atom']:.3f}")
    table.add_row("energy per structure (meV)", f"{result['energy_mae_meV']:.3f}", f"{result['energy_rmse_meV']:.3f}")
    table.add_row("forces (meV/Å)", f"{result['forces_mae_meV_per_A']:.2f}", f"{result['forces_rmse_meV_per_A']:.2f}")
    Console().print(table)


train_app = typer.Typer(
    cls=_DefaultCommandGroup, no_args_is_help=True, add_completion=False,
    help="Train a potential (torchrun for several GPUs) or a generative model from a YAML config: "
         "matsim train CONFIG.yaml; or align (densities to experiment) or distill.",
)
train_app.command(DEFAULT_COMMAND, help="Train from a YAML config (what 'matsim train CONFIG.yaml' runs).")(train)
train_app.command("align", help="Align liquid densities to experiment (pressure-corrected fine-tuning).")(align)
train_app.command("distill", help="Distil a teacher ensemble into a student potential.")(distill)
