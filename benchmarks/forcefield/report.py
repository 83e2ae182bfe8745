"""Validation errors of the force-field benchmark checkpoints beside the published MACE / NequIP / Allegro numbers.

    python benchmarks/forcefield/report.py [--runs-dir runs/forcefield] [--copy]

For each ``configs/NAME.yaml`` with a run in ``--runs-dir/NAME`` (or ``NAME-<suffix>`` given by ``--run NAME=DIR``),
the run's ``best.pt`` is evaluated here, on the CPU, on its own validation frames (the indices of the run's
``split.json`` into the config's data file), so the table does not rest on numbers logged on the GPU. Training
time is the sum of the run's per-epoch wall times (``metrics.csv``; ``device`` says where they ran and whether runs
shared the GPU). A warm restart ``configs/NAME-restart.yaml`` (a fresh cosine cycle from NAME's checkpoint) run in
``--runs-dir/NAME-restart`` (or ``--run NAME-restart=DIR``; several comma-separated folders are restarts of
restarts, in order) replaces NAME's best.pt in the table with the last stage's; epochs and time add up over all
stages. ``--copy`` copies each best.pt to ``checkpoints/NAME.pt``. Writes ``results.json`` / ``results.md``.
``--earlier results.json`` (this script's earlier output) stands in for run folders that are gone: a run with no
folder keeps its earlier row, and a restart given without its earlier stages adds their epochs and time (and
device note) from the earlier row.

Published numbers (../shared/anchors/PUBLISHED_BASELINES.md, recalled from the papers): rMD17 ethanol MAE (1000
training frames), 3BPA RMSE on the 300 K *test* set (ours: a 50-frame validation split of train_300K; the test sets
are held back), acac: none in the anchors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import ase.io
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from _report import command_line, logged_training, provenance, write_results  # noqa: E402

#: Published errors: {dataset: {model: (metric, energy meV (per structure), forces meV/Å)}}.
PUBLISHED = {
    "rmd17_ethanol": {"MACE": ("MAE", 0.4, 2.1), "NequIP": ("MAE", 0.4, 2.8), "Allegro": ("MAE", 0.4, 2.1)},
    "3bpa": {"MACE": ("RMSE", 3.0, 8.8), "NequIP": ("RMSE", 3.3, 10.8), "Allegro": ("RMSE", 3.84, 12.98)},
    "acac": {},
}
#: A config ``NAME-restart.yaml`` (``model.init_from`` the checkpoint of NAME) is a warm restart of run NAME: the
#: table reports NAME with the restart's best.pt, the epochs and time of both stages, and --copy writes NAME.pt.
RESTART_SUFFIX = "-restart"
#: Targets of the training issue (forces, meV/Å).
TARGETS = {"rmd17_ethanol": ("forces MAE", 3.0), "3bpa": ("forces RMSE", 11.0)}
COLUMNS = ["run", "epochs", "train_time_s", "device", "n_valid", "energy_mae_meV", "energy_rmse_meV",
           "forces_mae_meV_per_A", "forces_rmse_meV_per_A", "target", "published"]


def validation_file(config: dict, config_path: Path, run_dir: Path, workdir: Path) -> Path:
    """An extxyz of the run's validation frames."""
    data = (config_path.parent / config["data"]["train"]).resolve()
    split = json.loads((run_dir / "split.json").read_text())
    frames = ase.io.read(data, ":")
    path = workdir / f"{run_dir.name}-valid.xyz"
    ase.io.write(path, [frames[i] for i in split["valid"]], format="extxyz")
    return path


def main() -> None:
    from matsim.train.evaluate import evaluate_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "forcefield")
    parser.add_argument("--run", action="append", default=[], help="NAME=DIR: the run folder of config NAME")
    parser.add_argument("--device-note", action="append", default=[], help="NAME=TEXT: where the run trained")
    parser.add_argument("--copy", action="store_true", help="copy each best.pt to checkpoints/NAME.pt")
    parser.add_argument("--earlier", type=Path, help="results.json of an earlier report (for run folders now gone)")
    args = parser.parse_args()
    run_dirs = dict(item.split("=", 1) for item in args.run)
    notes = dict(item.split("=", 1) for item in args.device_note)
    earlier = {row["run"]: row for row in json.loads(args.earlier.read_text())["results"]} if args.earlier else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config_path in sorted((HERE / "configs").glob("*.yaml")):
            name = config_path.stem
            if name.endswith(RESTART_SUFFIX):  # reported as the last stage of the run it restarts
                continue
            stages = [Path(run_dirs.get(name, args.runs_dir / name))]
            restarts = run_dirs.get(name + RESTART_SUFFIX, str(args.runs_dir / (name + RESTART_SUFFIX)))
            stages += [Path(d) for d in restarts.split(",") if (Path(d) / "best.pt").is_file()]
            base_epochs, base_seconds, base_note = 0, 0.0, None
            if not (stages[0] / "best.pt").is_file() and name in earlier:
                if len(stages) == 1:  # nothing new: the earlier row stands
                    rows.append(earlier[name])
                    print(f"{name}: kept from {args.earlier}", flush=True)
                    continue
                stages = stages[1:]
                base = earlier[name]
                base_epochs, base_seconds, base_note = int(base["epochs"]), float(base["train_time_s"]), base["device"]
            run_dir = stages[-1]
            if not (run_dir / "best.pt").is_file():
                print(f"{name}: no run in {run_dir}", flush=True)
                continue
            config = yaml.safe_load(config_path.read_text())
            dataset = name.rsplit("-", 1)[0]
            valid = validation_file(config, config_path, run_dir, Path(tmp))
            errors = evaluate_checkpoint(run_dir / "best.pt", valid, device="cpu")
            atoms = len(ase.io.read(valid, 0))
            epochs, seconds = map(sum, zip((base_epochs, base_seconds), *(logged_training(stage) for stage in stages)))
            note = "; ".join(n for n in (base_note, notes.get(name)) if n) or "-"
            target = TARGETS.get(dataset)
            published = "; ".join(f"{m} {k} E {e} / F {f}" for m, (k, e, f) in PUBLISHED[dataset].items()) or "-"
            rows.append({
                "run": name, "epochs": epochs, "train_time_s": round(seconds), "device": note,
                "n_valid": errors["n_structures"],
                "energy_mae_meV": errors["energy_mae_meV_per_atom"] * atoms,
                "energy_rmse_meV": errors["energy_rmse_meV_per_atom"] * atoms,
                "forces_mae_meV_per_A": errors["forces_mae_meV_per_A"],
                "forces_rmse_meV_per_A": errors["forces_rmse_meV_per_A"],
                "target": f"{target[0]} ≤ {target[1]}" if target else "-", "published": published,
            })
            print(json.dumps(rows[-1]), flush=True)
            if args.copy:
                (HERE / "checkpoints").mkdir(exist_ok=True)
                shutil.copyfile(run_dir / "best.pt", HERE / "checkpoints" / f"{name}.pt")
    command = command_line("benchmarks/forcefield/report.py")
    write_results(HERE / "results", "Force-field benchmarks: validation errors of the committed checkpoints", command,
                  rows, COLUMNS, provenance(["e3nn"]) | {"evaluated_on": "cpu (this machine)"},
                  notes="Energies per structure (meV) and forces (meV/Å) of best.pt on the run's own validation "
                        "frames. Published numbers are test-set errors of fully trained models (see the module "
                        "docstring); ours are short runs (epochs column).")


if __name__ == "__main__":
    main()
