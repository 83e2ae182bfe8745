"""Liquid densities of a matsim potential against experiment (issue 6, benchmark b), NPT MD of several liquids at once.

    python benchmarks/electrolyte/density.py --model electrolyte-small --output runs/density --jobs 6 \
        --experiment ../shared/data/electrolyte_experiment/solvent_properties_literature.csv
    python benchmarks/electrolyte/density.py --report runs/density \
        --experiment ../shared/data/electrolyte_experiment/solvent_properties_literature.csv

Each liquid is built (rdkit + packmol at the builder's estimated density), minimised, optionally equilibrated in NVT
at that density (``--nvt-steps``), and run in NPT (Berendsen barostat and thermostat at 1 atm) through
``matsim md run``'s runner, one process per liquid (``--jobs`` at a time; on one GPU the small models are
launch-bound, so processes overlap well). The density is the mean over the second half of the NPT stage with its
block-averaged standard error.

A freshly packed and minimised box starts at thousands of bar; straight into NPT, the barostat first expands it by
10-30 % within a picosecond and the liquid then needs several picoseconds to come back (``results/density_v1.md``,
``results/density_v2_gcp.md``). ``--nvt-steps 3000`` lets the packing relax at constant volume first. The report writes ``density.json`` and ``density.md``
beside the runs: simulated and experimental density (the experimental temperature is used for each liquid: EC is
a liquid above 36 °C and is compared at 40 °C) and the difference.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

#: name -> (builder system, temperature in K). Solvent temperatures follow the experimental table.
LIQUIDS: dict[str, tuple[dict, float]] = {
    "EC": ({"solvents": [{"name": "EC"}]}, 313.15),
    "PC": ({"solvents": [{"name": "PC"}]}, 298.15),
    "DMC": ({"solvents": [{"name": "DMC"}]}, 298.15),
    "EMC": ({"solvents": [{"name": "EMC"}]}, 298.15),
    "DEC": ({"solvents": [{"name": "DEC"}]}, 298.15),
    "LP30": ({"solvents": [{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}], "ratio_basis": "mass",
              "salts": [{"name": "LiPF6", "concentration": 1.0, "unit": "mol/L"}]}, 298.15),
}


def md_config(model: str, system: dict, temperature: float, n_atoms: int, steps: int, device: str,
              nvt_steps: int = 0) -> dict:
    """The ``matsim md run`` config of one density run: minimise, ``nvt_steps`` of Bussi NVT at the packed density
    (none by default), then Berendsen NPT at 1 atm."""
    equilibration = [{"kind": "nvt", "name": "nvt", "steps": nvt_steps, "timestep_fs": 1.0,
                      "temperature_K": temperature, "thermostat": "bussi"}] if nvt_steps else []
    return {
        "system": {**system, "n_atoms": n_atoms, "seed": 0},
        "model": model, "device": device, "dtype": "float32",
        "stages": [
            {"kind": "minimise", "steps": 200, "fmax": 0.2},
            *equilibration,
            {"kind": "npt", "name": "npt", "steps": steps, "timestep_fs": 1.0, "temperature_K": temperature,
             "pressure_bar": 1.01325, "barostat": "berendsen", "pdamp_fs": 500.0, "tdamp_fs": 100.0},
        ],
        "output": {"thermo_every": 10, "trajectory_every": 500, "checkpoint_every": 1000, "progress": False},
        "analysis": {"enabled": False},
        "seed": 0,
    }


def run_liquid(name: str, config: dict, directory: Path) -> str | None:
    """Run one liquid (resumes an interrupted run); the error message or None."""
    from matsim.core.config import validate_config
    from matsim.core.errors import MatsimError
    from matsim.md.config import MDConfig
    from matsim.md.runner import CHECKPOINT_NAME, run_md

    try:
        run_md(validate_config(MDConfig, config, source=name), directory,
               resume=(directory / CHECKPOINT_NAME).exists(), progress=False, analyze=False)
    except MatsimError as exc:
        return str(exc)
    return None


def density_of(directory: Path) -> dict:
    """Mean density (g/cm³) over the second half of the NPT rows of ``thermo.csv``, with its block error."""
    from matsim.md.analysis.statistics import block_average

    with open(directory / "thermo.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] == "npt"]
    density = np.array([float(r["density_g_cm3"]) for r in rows])
    second_half = density[len(density) // 2:]
    average = block_average(second_half)
    time_ps = float(rows[-1]["time_fs"]) / 1000.0 if rows else 0.0
    return {"density_g_cm3": average.mean, "error_g_cm3": average.error, "npt_ps": time_ps,
            "averaged_ps": time_ps / 2, "n_atoms": _n_atoms(directory)}


def _n_atoms(directory: Path) -> int:
    import ase.io

    return len(ase.io.read(directory / "initial.extxyz"))


def experimental_densities(path: Path) -> dict[str, tuple[float, float, str]]:
    """abbrev -> (density g/cm³, temperature K, source) from the literature table."""
    with open(path) as handle:
        return {r["abbrev"]: (float(r["density_g_cm3"]), float(r["T_C"]) + 273.15, r["source"])
                for r in csv.DictReader(handle) if r["density_g_cm3"]}


def report(output: Path, experiment: Path | None) -> dict:
    """Collect the densities of the runs in ``output``; write density.json and density.md there."""
    import matsim

    run_info = json.loads((output / "runs.json").read_text())
    measured = experimental_densities(experiment) if experiment else {}
    rows = []
    for name, info in run_info["liquids"].items():
        row = {"liquid": name, "temperature_K": info["temperature_K"], "error": info.get("error")}
        if (output / name / "thermo.csv").is_file():
            row.update(density_of(output / name))
        if name in measured:
            row["experiment_g_cm3"], row["experiment_T_K"], row["experiment_source"] = measured[name]
            if "density_g_cm3" in row:
                row["delta_g_cm3"] = row["density_g_cm3"] - row["experiment_g_cm3"]
        rows.append(row)
    deltas = [abs(r["delta_g_cm3"]) for r in rows if "delta_g_cm3" in r]
    result = {**run_info, "rows": rows, "mean_abs_delta_g_cm3": float(np.mean(deltas)) if deltas else None,
              "matsim_version": matsim.__version__}
    (output / "density.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Liquid densities: {run_info['model']} vs experiment", "",
             f"Device: {run_info['device']}; date {run_info['date']}; matsim commit {run_info['commit']}; "
             f"torch {run_info['torch']}.", "",
             f"Command: `{run_info['command']}`", "",
             "| liquid | T (K) | atoms | NPT (ps) | ρ sim (g/cm³) | ρ exp (g/cm³) | Δρ |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        sim = f"{r['density_g_cm3']:.3f} ± {r['error_g_cm3']:.3f}" if "density_g_cm3" in r else f"failed: {r['error']}"
        exp = f"{r['experiment_g_cm3']:.3f}" if "experiment_g_cm3" in r else "n/a"
        delta = f"{r['delta_g_cm3']:+.3f}" if "delta_g_cm3" in r else "n/a"
        lines.append(f"| {r['liquid']} | {r['temperature_K']:.2f} | {r.get('n_atoms', '')} | "
                     f"{r.get('npt_ps', 0):.1f} | {sim} | {exp} | {delta} |")
    if deltas:
        lines += ["", f"Mean |Δρ| over the liquids with an experimental value: {np.mean(deltas):.3f} g/cm³."]
    (output / "density.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="electrolyte-small")
    parser.add_argument("--output", type=Path, default=Path("runs/density"))
    parser.add_argument("--liquids", nargs="*", default=list(LIQUIDS))
    parser.add_argument("--n-atoms", type=int, default=600)
    parser.add_argument("--steps", type=int, default=6000, help="NPT steps of 1 fs")
    parser.add_argument("--nvt-steps", type=int, default=0,
                        help="NVT steps of 1 fs at the packed density before NPT (see the module docstring)")
    parser.add_argument("--jobs", type=int, default=len(LIQUIDS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", type=Path, default=None, help="solvent_properties_literature.csv")
    parser.add_argument("--report", type=Path, default=None, help="only collect the results of this output folder")
    args = parser.parse_args()
    if args.report is not None:
        report(args.report, args.experiment)
        print((args.report / "density.md").read_text())
        return

    import torch

    from matsim.models import resolve_device

    args.output.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    configs = {name: md_config(args.model, LIQUIDS[name][0], LIQUIDS[name][1], args.n_atoms, args.steps, args.device,
                               args.nvt_steps)
               for name in args.liquids}
    info = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "commit": os.environ.get("MATSIM_COMMIT", "unknown"),
        "command": f"python benchmarks/electrolyte/density.py --model {args.model} --n-atoms {args.n_atoms} "
                   f"--steps {args.steps} --nvt-steps {args.nvt_steps} --jobs {args.jobs} "
                   f"--liquids {' '.join(args.liquids)}",
        "liquids": {name: {"temperature_K": LIQUIDS[name][1], "error": None} for name in args.liquids},
    }
    runs_file = args.output / "runs.json"
    runs_file.write_text(json.dumps(info, indent=2) + "\n")  # first, so --report works on an interrupted run
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(run_liquid, name, config, args.output / name) for name, config in configs.items()}
        for name, future in futures.items():
            info["liquids"][name]["error"] = future.result()
    runs_file.write_text(json.dumps(info, indent=2) + "\n")
    report(args.output, args.experiment)
    print((args.output / "density.md").read_text())


if __name__ == "__main__":
    main()
