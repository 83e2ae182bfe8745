"""Do the molecules of a salt solution stay whole? NVT MD of LiPF6, LiFSI and LiTFSI in EC:DMC with one or more
models, each run checked bond by bond (issue 6: PF6⁻ fell apart within picoseconds with electrolyte-small v1).

    python benchmarks/electrolyte/anion_stability.py --models electrolyte-small runs/v3.pt --output runs/stability \
        --steps 10000 --jobs 6
    python benchmarks/electrolyte/anion_stability.py --report runs/stability \
        --results benchmarks/electrolyte/results/anion_stability_v3

Each (model, liquid) pair is one ``matsim md run`` (its runner, one process each, ``--jobs`` at a time): a 1 M
solution in EC:DMC 1:1 by mass built by rdkit + packmol, minimised, then Bussi NVT at ``--temperature`` with a
frame every 100 fs. The report reads every trajectory written so far (an interrupted run counts for the time it
ran) and checks each covalent bond of the built box in every frame (:func:`matsim.md.analysis.topology
.topology_changes`: broken beyond 1.6 × the covalent length): the time of the first broken bond, the bond types
and molecules broken at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

SOLVENT = {"solvents": [{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}], "ratio_basis": "mass"}
LIQUIDS: dict[str, dict] = {
    salt: {**SOLVENT, "salts": [{"name": salt, "concentration": 1.0, "unit": "mol/L"}]}
    for salt in ("LiPF6", "LiFSI", "LiTFSI")
}
FRAME_EVERY = 100  # steps of 1 fs


def md_config(model: str, system: dict, temperature: float, n_atoms: int, steps: int, device: str) -> dict:
    """The ``matsim md run`` config of one stability run: minimise, then ``steps`` of Bussi NVT."""
    return {
        "system": {**system, "n_atoms": n_atoms, "seed": 0},
        "model": model, "device": device, "dtype": "float32",
        "stages": [
            {"kind": "minimise", "steps": 200, "fmax": 0.2},
            {"kind": "nvt", "name": "nvt", "steps": steps, "timestep_fs": 1.0, "temperature_K": temperature,
             "thermostat": "bussi", "tdamp_fs": 100.0},
        ],
        "output": {"thermo_every": 50, "trajectory_every": FRAME_EVERY, "checkpoint_every": 1000,
                   "trajectory_format": "extxyz", "progress": False},
        "analysis": {"enabled": False},
        "seed": 0,
    }


def run_one(name: str, config: dict, directory: Path) -> str | None:
    """Run one (model, liquid) pair; the error message or None."""
    from matsim.core.config import validate_config
    from matsim.core.errors import MatsimError
    from matsim.md.config import MDConfig
    from matsim.md.runner import run_md

    try:
        run_md(validate_config(MDConfig, config, source=name), directory, progress=False, analyze=False)
    except MatsimError as exc:
        return str(exc)
    return None


def check_run(directory: Path) -> dict:
    """Topology of one run's trajectory so far: NVT ps simulated, first broken bond (ps into NVT), what is broken
    at the end."""
    from ase.io import read

    from matsim.md.analysis.topology import topology_changes
    from matsim.md.analysis.trajectory import molecule_labels

    reference = read(directory / "initial.extxyz")
    frames = read(directory / "trajectory.extxyz", ":") if (directory / "trajectory.extxyz").is_file() else []
    frames = [f for f in frames if f.info.get("stage") == "nvt"] or frames
    if not frames:
        return {"ps": 0.0, "intact": None}
    report = topology_changes(frames, reference, molecule_labels(reference), FRAME_EVERY)
    first = None if report.first_broken_fs is None else report.first_broken_fs / 1000.0
    return {"ps": float(frames[-1].info.get("time_fs", 0.0)) / 1000.0, "atoms": len(reference), "intact": report.first_broken_fs is None,
            "first_broken_ps": first, "broken_at_end": report.broken, "broken_bond_types": report.broken_bond_types,
            "molecules": report.molecules}


def report(output: Path, results: Path) -> dict:
    """Check every run of ``output``; write ``results``.json and .md."""
    info = json.loads((output / "runs.json").read_text())
    rows = []
    for key, run in info["runs"].items():
        row = {"model": run["model"], "liquid": run["liquid"], "error": run.get("error")}
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
             "broken at the end | bond types |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ps" not in r:
            lines.append(f"| {r['model']} | {r['liquid']} | | failed: {r['error']} | | | |")
            continue
        first = "none" if r.get("intact") else f"{r['first_broken_ps']:.2f}"
        broken = ", ".join(f"{n} of {r['molecules'][s]} {s}" for s, n in sorted(r.get("broken_at_end", {}).items()))
        lines.append(f"| {r['model']} | {r['liquid']} | {r.get('atoms', '')} | {r['ps']:.1f} | {first} | "
                     f"{broken or 'none'} | {', '.join(r.get('broken_bond_types', [])) or '–'} |")
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
    runs = {f"{Path(model).stem}-{liquid}": {"model": model, "liquid": liquid, "error": None}
            for model in args.models for liquid in args.liquids}
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "commit": os.environ.get("MATSIM_COMMIT", "unknown"), "temperature_K": args.temperature,
        "command": f"python benchmarks/electrolyte/anion_stability.py --models {' '.join(args.models)} "
                   f"--liquids {' '.join(args.liquids)} --n-atoms {args.n_atoms} --steps {args.steps} "
                   f"--temperature {args.temperature} --jobs {args.jobs}",
        "runs": runs,
    }
    runs_file = args.output / "runs.json"
    runs_file.write_text(json.dumps(info, indent=2) + "\n")  # first, so --report works on an interrupted run
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {key: pool.submit(run_one, key, md_config(run["model"], LIQUIDS[run["liquid"]], args.temperature,
                                                            args.n_atoms, args.steps, args.device),
                                    args.output / key)
                   for key, run in runs.items()}
        for key, future in futures.items():
            runs[key]["error"] = future.result()
    runs_file.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
