"""Provenance and output for benchmark results: every result file records machine, date, versions and commit."""

from __future__ import annotations

import datetime as _dt
import csv
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable


def provenance(packages: Iterable[str] = ()) -> dict[str, Any]:
    """Machine, date, git commit and package versions of this run."""
    import torch

    from matsim import __version__ as matsim_version

    versions = {"python": platform.python_version(), "matsim": matsim_version}
    for name in ("torch", *packages):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = os.environ.get("MATSIM_COMMIT")  # set it where the checkout has no git metadata (the GPU machine)
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("MATSIM_COMMIT", "unknown")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node() or 'unknown'}; {os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}",
        "device": device,
        "commit": commit,
        "versions": versions,
    }


def command_line(script: str) -> str:
    """The command that ran ``script`` (a path from the repository root), quoted so that it can be pasted."""
    return shlex.join(["python", script, *sys.argv[1:]])


def write_results(stem: Path, title: str, command: str, rows: list[dict[str, Any]], columns: list[str],
                  meta: dict[str, Any], notes: str = "") -> None:
    """Write ``stem.json`` (meta + rows) and ``stem.md`` (a table with the provenance and the command)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({**meta, "command": command, "results": rows}, indent=2) + "\n")
    lines = [f"# {title}", "", f"Reproduce: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items() if key != "versions"]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()), ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    if notes:
        lines += ["", notes.strip()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def logged_training(run_dir: Path) -> tuple[int, float]:
    """Epochs trained and their summed wall time (s) from a run's ``metrics.csv`` (all its resumed calls)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (int(rows[-1]["epoch"]) if rows else 0), sum(float(r["time_s"]) for r in rows if r.get("time_s"))


def train_generative(config_path: Path, overrides: list[str], skip: bool) -> tuple[Any, float | None]:
    """The validated generative training config and, unless ``skip``, its training run's wall time in seconds
    (the run goes through :class:`matsim.train.generative.GenerativeTrainer`, as ``matsim train`` does)."""
    import time

    from matsim.train.generative import GenerativeTrainer
    from matsim.train.generative_config import load_generative_config

    config = load_generative_config(config_path, overrides)
    if skip:
        return config, None
    t0 = time.perf_counter()
    summary = GenerativeTrainer(config).fit()
    seconds = time.perf_counter() - t0
    print(f"trained {summary['epoch']} epochs in {seconds:.0f} s (best epoch {summary['best_epoch']}, "
          f"valid loss {summary['best_valid_loss']:.4g})", flush=True)
    return config, seconds

