"""``matsim info``: versions of matsim and its stack, compute devices, pretrained models available offline."""

from __future__ import annotations

import importlib.metadata
import platform

import typer
from rich.console import Console
from rich.table import Table

from matsim._version import __version__
from matsim.models import pretrained

#: Distributions reported by ``matsim info`` (required first, then optional).
REPORTED_PACKAGES = (
    "torch", "torch-geometric", "e3nn", "ase", "pymatgen", "rdkit", "vesin", "vesin-torch", "pydantic", "numpy",
    "tblite", "pyscf", "torch-pme", "tad-dftd3", "chgnet", "smact", "packmol",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in :data:`REPORTED_PACKAGES` (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def devices() -> list[str]:
    """Compute devices torch can use here, CPU first."""
    import torch

    found = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for k in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(k)
            found.append(f"cuda:{k} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return found


def info(json_output: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print versions, devices and the pretrained models available offline."""
    report = {
        "matsim": __version__,
        "python": platform.python_version(),
        "packages": package_versions(),
        "devices": devices(),
        "pretrained_models": pretrained.available(),
    }
    if json_output:
        import json

        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(f"matsim {report['matsim']} (Python {report['python']})")
    table = Table("package", "version")
    for name, version in report["packages"].items():
        table.add_row(name, version or "[dim]not installed[/dim]")
    console.print(table)
    console.print("devices: " + ", ".join(report["devices"]))
    models = report["pretrained_models"]
    console.print("pretrained models (offline): " + (", ".join(models) if models else "none shipped yet"))
