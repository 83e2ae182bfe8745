"""``matsim data``: dataset commands (``label``: reference energies, forces, charges and dipoles for extxyz frames;
``gcp``: the geometrical counterpoise correction added to DFT labels; ``electrolyte``: DFT-sized clusters cut from
MD snapshots of electrolytes, with active-learning selection)."""

from __future__ import annotations

import enum
import io
from pathlib import Path

import typer

from matsim.reference.labeller import METHOD_NAMES, ReferenceMethod, label_file

__all__ = ["data_app"]

data_app = typer.Typer(
    help="Datasets: label frames with reference methods (GFN-xTB, DFT); sample electrolyte clusters.",
    no_args_is_help=True, add_completion=False
)

#: The labeller's methods as a typer choice.
Method = enum.Enum("Method", {name: name for name in METHOD_NAMES}, type=str)


@data_app.callback()
def _data() -> None:
    """Datasets: label frames with reference methods (GFN-xTB, DFT); sample electrolyte clusters."""


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


@data_app.command("gcp")
def gcp(
    input_path: Path = typer.Argument(..., metavar="IN.xyz", help="DFT-labelled extxyz file (matsim data label)."),
    output: Path = typer.Option(..., "--output", "-o", help="Corrected extxyz file (written whole, atomically)."),
    xc: str = typer.Option("b3lyp", "--xc", help="Functional of the labels."),
    basis: str = typer.Option("def2-SVP", "--basis", help="Basis set of the labels."),
    scale: float = typer.Option(1.0, "--scale", help="Factor on the correction (1 = published gCP; "
                                                      "benchmarks/electrolyte/bsse.py fits one to counterpoise data)."),
) -> None:
    """Add the geometrical counterpoise correction (gCP) to the energies and forces of DFT labels.

    It removes most of the basis-set superposition error of small basis sets (def2-SVP), which otherwise makes every
    intermolecular contact too sticky. Charges and dipoles are kept; info['label_level'] records the correction.
    """
    from ase.io import write

    from matsim.core.io import atomic_write_text
    from matsim.datasets.atoms import read_frames
    from matsim.reference.gcp import add_gcp_to_labels

    frames = add_gcp_to_labels(read_frames(input_path), xc=xc, basis=basis, scale=scale)
    buffer = io.StringIO()
    write(buffer, frames, format="extxyz")
    atomic_write_text(output, buffer.getvalue())
    typer.echo(f"{output}: {len(frames)} frames, level {frames[0].info['label_level'] if frames else 'n/a'}")


@data_app.command("electrolyte")
def electrolyte(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Sampling config (liquids, MD, clusters)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder (default: the config's output)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value: key.path=value (repeatable)."),
    select: int | None = typer.Option(None, "--select", help="Also select the N clusters the ensemble disagrees on "
                                                              "most (writes selected.extxyz)."),
    ensemble: list[str] = typer.Option([], "--ensemble", help="Ensemble member: checkpoint or pretrained name "
                                                               "(repeat, or comma-separate; at least 2)."),
    reduce: str | None = typer.Option(None, "--reduce", help="Disagreement over atoms: max (default) or mean."),
) -> None:
    """Cut clusters of 10-60 atoms (Li+ shells, contact ion pairs, solvent dimers/trimers, anion-solvent pairs)
    from MD snapshots of electrolyte liquids; write clusters.extxyz and summary.json.

    Label them afterwards with `matsim data label OUT/clusters.extxyz --method dft|gfn2`.
    """
    from matsim.core.config import validate_config
    from matsim.core.errors import ConfigError
    from matsim.datasets.electrolyte_sampling import ActiveLearningConfig, load_sampling_config, sample_electrolyte

    config = load_sampling_config(config_path, overrides)
    members = [m.strip() for item in ensemble for m in item.split(",") if m.strip()]
    if select is not None or members or reduce is not None:
        if select is None and config.active_learning is None:
            raise ConfigError("--ensemble / --reduce need --select N (or an active_learning section in the config)")
        data = config.active_learning.model_dump() if config.active_learning else {}
        data.update({k: v for k, v in (("select", select), ("ensemble", members or None), ("reduce", reduce))
                     if v is not None})
        config.active_learning = validate_config(ActiveLearningConfig, data, source="--select/--ensemble")
    result = sample_electrolyte(config, output, log=lambda message: typer.echo(message, err=True))
    summary = result.summary
    kinds = ", ".join(f"{k} {v}" for k, v in summary["by_kind"].items()) or "none"
    typer.echo(f"{result.clusters_path}: {summary['n_clusters']} clusters ({kinds}); summary in {result.summary_path}")
    for name, entry in summary["liquids"].items():
        if "error" in entry:
            typer.echo(f"  {name}: no snapshots: {entry['error']}")
    if result.selected_path is not None:
        typer.echo(f"{result.selected_path}: {len(result.selected)} clusters selected by ensemble disagreement")
