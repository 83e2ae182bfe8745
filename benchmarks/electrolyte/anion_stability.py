"""Do the molecules of a salt solution stay whole? NVT MD of LiPF6, LiFSI and LiTFSI in EC:DMC with one or more
models, each run checked bond by bond (issue 6: PF6⁻ fell apart within picoseconds with electrolyte-small v1).

    python benchmarks/electrolyte/anion_stability.py --models electrolyte-small runs/v3.pt --output runs/stability \
        --steps 10000 --jobs 6 --seconds 500
    python benchmarks/electrolyte/anion_stability.py --report runs/stability \
        --results benchmarks/electrolyte/results/anion_stability_v3

Each (model, liquid) pair is one ``matsim md run`` subprocess (``--jobs`` at a time; at ``--seconds`` of wall time
the running ones are interrupted and keep what they wrote): a 1 M solution in EC:DMC 1:1 by mass built by rdkit +
packmol, minimised, then Bussi NVT at ``--temperature`` with a frame every ``--frame-every`` fs (50). A run the watchdog stops (a
blow-up) says so in the report. The report reads every trajectory written so far (an interrupted run counts for the
time it ran) and checks each covalent bond of the built box in every frame (:func:`matsim.md.analysis.topology
.topology_changes`: broken beyond 1.6 × the covalent length): the time of the first broken bond, the bond types
and molecules broken at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

SOLVENT = {"solvents": [{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}], "ratio_basis": "mass"}
LIQUIDS: dict[str, dict] = {
    salt: {**SOLVENT, "salts": [{"name": salt, "concentration": 1.0, "unit": "mol/L"}]}
    for salt in ("LiPF6", "LiFSI", "LiTFSI")
}


def md_config(model: str, system: dict, temperature: float, n_atoms: int, steps: int, device: str,
              frame_every: int = 50) -> dict:
    """The ``matsim md run`` config of one stability run: minimise, then ``steps`` of Bussi NVT (1 fs), a frame
    every ``frame_every`` steps."""
    return {
        "system": {**system, "n_atoms": n_atoms, "seed": 0},
        "model": model, "device": device, "dtype": "float32",
        "stages": [
            {"kind": "minimise", "steps": 200, "fmax": 0.2},
            {"kind": "nvt", "name": "nvt", "steps": steps, "timestep_fs": 1.0, "temperature_K": temperature,
             "thermostat": "bussi", "tdamp_fs": 100.0},
        ],
        "output": {"thermo_every": 50, "trajectory_every": frame_every, "checkpoint_every": 1000,
                   "trajectory_format": "extxyz", "progress": False},
        "analysis": {"enabled": False},
        "seed": 0,
    }


def run_all(runs: dict[str, dict], output: Path, jobs: int, seconds: float) -> None:
    """Run every ``matsim md run`` of ``runs`` (``jobs`` at a time; config and ``run.log`` in ``output/KEY``). At
    ``seconds`` of wall time the running ones get SIGINT (they stop and keep what they wrote) and the rest are
    skipped; each run's exit status and last log line go into ``runs[KEY]``."""
    deadline = time.monotonic() + seconds
    waiting, running = list(runs), {}
    while waiting or running:
        while waiting and len(running) < jobs and time.monotonic() < deadline:
            key = waiting.pop(0)
            directory = output / key
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "config.yaml").write_text(yaml.safe_dump(runs[key]["config"], sort_keys=False))
            log = open(directory / "run.log", "w")
            running[key] = subprocess.Popen([sys.executable, "-m", "matsim", "md", "run", str(directory / "config.yaml"),
                                             "--output", str(directory), "--no-progress"], stdout=log, stderr=log)
        if time.monotonic() >= deadline:
            waiting.clear()
            for key, process in running.items():
                if not runs[key].get("interrupted"):
                    process.send_signal(signal.SIGINT)
                    runs[key]["interrupted"] = True
        for key, process in list(running.items()):
            if process.poll() is not None:
                lines = (output / key / "run.log").read_text().strip().splitlines()
                runs[key].update(exit_status=process.returncode, last_log_line=lines[-1] if lines else "")
                del running[key]
        time.sleep(1.0)


def check_run(directory: Path) -> dict:
    """Topology of one run's trajectory so far (its only MD stage is the NVT): ps simulated, first broken bond (ps
    into NVT), what is broken at the end."""
    from ase.io import read

    from matsim.md.runner import run_topology

    trajectory = directory / "trajectory.extxyz"
    frames = read(trajectory, ":") if trajectory.is_file() and trajectory.stat().st_size else []
    if not frames:
        return {"ps": 0.0, "intact": None, "first_broken_ps": None, "broken_at_end": {}, "broken_bond_types": []}
    report = run_topology(directory, frames, frame_interval_fs=1.0)  # frame times come from info["time_fs"]
    first = None if report.first_broken_fs is None else report.first_broken_fs / 1000.0
    return {"ps": float(frames[-1].info["time_fs"]) / 1000.0, "atoms": len(frames[0]),
            "intact": report.first_broken_fs is None, "first_broken_ps": first, "broken_at_end": report.broken,
            "broken_bond_types": report.broken_bond_types, "molecules": report.molecules}


def report(output: Path, results: Path) -> dict:
    """Check every run of ``output``; write ``results``.json and .md."""
    info = json.loads((output / "runs.json").read_text())
    rows = []
    for key, run in info["runs"].items():
        stopped = run.get("exit_status") not in (0, None) and not run.get("interrupted")
        row = {"model": run["model"], "liquid": run["liquid"], "error": run.get("last_log_line") if stopped else None}
        if (output / key / "initial.extxyz").is_file():
            row.update(check_run(output / key))
        rows.append(row)
    result = {**info, "rows": rows}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Do the anions stay whole? NVT MD at {info['temperature_K']} K", "",
             f"Device: {info['device']}; date {info['date']}; matsim commit {info['commit']}; torch {info['torch']}.",
             "", f"Command: `{info['command']}`, then `python benchmarks/electrolyte/anion_stability.py --report "
             f"{output} --results {results}`", "",
             "| model | liquid (1 M in EC:DMC) | atoms | NVT simulated (ps) | first broken bond (ps) | "
             "broken at the end | bond types | stopped by |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ps" not in r:
            lines.append(f"| {r['model']} | {r['liquid']} | | 0 | | | | {r['error'] or 'not run'} |")
            continue
        first = {True: "none", None: "no NVT frame"}.get(r["intact"]) or f"{r['first_broken_ps']:.2f}"
        broken = ", ".join(f"{n} of {r['molecules'][s]} {s}" for s, n in sorted(r.get("broken_at_end", {}).items()))
        lines.append(f"| {r['model']} | {r['liquid']} | {r.get('atoms', '')} | {r['ps']:.1f} | {first} | "
                     f"{broken or 'none'} | {', '.join(r.get('broken_bond_types', [])) or '–'} | "
                     f"{r['error'] or 'the step or time budget'} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["electrolyte-small"])
    parser.add_argument("--liquids", nargs="*", default=list(LIQUIDS))
    parser.add_argument("--output", type=Path, default=Path("runs/stability"))
    parser.add_argument("--n-atoms", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10000, help="NVT steps of 1 fs")
    parser.add_argument("--temperature", type=float, default=298.15, help="K")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--frame-every", type=int, default=50, help="trajectory frame every this many steps")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="wall-clock budget of all runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", type=Path, default=None, help="only check the runs of this output folder")
    parser.add_argument("--results", type=Path, default=None, help="where the report goes (.json and .md)")
    args = parser.parse_args()
    if args.report is not None:
        results = args.results or args.report / "stability"
        report(args.report, results)
        print(results.with_suffix(".md").read_text())
        return

    import torch

    from matsim.models import resolve_device

    args.output.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    runs = {f"{Path(model).stem}-{liquid}": {
        "model": model, "liquid": liquid,
        "config": md_config(model, LIQUIDS[liquid], args.temperature, args.n_atoms, args.steps, args.device,
                            args.frame_every)}
        for model in args.models for liquid in args.liquids}
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "commit": os.environ.get("MATSIM_COMMIT", "unknown"), "temperature_K": args.temperature,
        "command": f"python benchmarks/electrolyte/anion_stability.py --models {' '.join(args.models)} "
                   f"--liquids {' '.join(args.liquids)} --n-atoms {args.n_atoms} --steps {args.steps} "
                   f"--temperature {args.temperature} --frame-every {args.frame_every} --jobs {args.jobs} "
                   f"--seconds {args.seconds:g}",
        "runs": runs,
    }
    (args.output / "runs.json").write_text(json.dumps(info, indent=2) + "\n")  # --report works on a killed run
    run_all(runs, args.output, args.jobs, args.seconds)
    (args.output / "runs.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
