"""``matsim train CONFIG.yaml`` and ``matsim evaluate CHECKPOINT DATA.xyz``: thin typer commands over matsim.train.

Multi-GPU: the same command under ``torchrun --no-python --nproc_per_node=N matsim train CONFIG.yaml`` trains
with DDP (one process per GPU); several nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint``.
"""

from __future__ import annotations

import json as json_module
from pathlib import Path

import typer

__all__ = ["train", "evaluate"]


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
