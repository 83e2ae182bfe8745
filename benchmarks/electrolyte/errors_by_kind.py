"""Errors of an electrolyte model by cluster kind, on clusters cut from its own liquid runs beside the gas-phase test
clusters (issue 6: does the network extrapolate in the condensed phase it simulates?).

    # clusters cut from the density runs' trajectories, labelled with B3LYP/def2-SVP
    matsim data electrolyte benchmarks/electrolyte/liquid_clusters.yaml --output runs/electrolyte/al-v2
    matsim data label runs/electrolyte/al-v2/clusters.extxyz --method dft -o runs/electrolyte/al-v2/dft-b3lyp.extxyz
    python benchmarks/electrolyte/errors_by_kind.py --model electrolyte-small \
        --data runs/electrolyte/al-v2/dft-b3lyp.extxyz --output benchmarks/electrolyte/results/liquid_clusters_v1

Clusters with a molecule that is not one bonded piece (``matsim.datasets.displacements.molecules_intact``: e.g. a
PF6⁻ that lost a fluoride in the model's liquid) form a set of their own. Both sets are compared with the model's
dispersion term off (the fit's level). ``--gcp-scale S`` first adds S × gCP
to every label (``matsim data gcp``), for a model fitted to gCP-corrected labels. Writes OUTPUT.json and OUTPUT.md:
per set and cluster kind, the number of clusters, energy MAE (meV/atom) and force MAE/RMSE (meV/Å).
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from ase.io import write

from matsim.datasets.atoms import read_frames
from matsim.datasets.displacements import molecules_intact
from matsim.datasets.graphs import GraphDataset
from matsim.models import load_model
from matsim.reference.gcp import add_gcp_to_labels
from matsim.train.distill import without_dispersion
from matsim.train.evaluate import evaluate_dataset

TEST = Path(__file__).parent / "data" / "dft-test.extxyz.xz"


def errors_by_kind(model, frames: list, workdir: Path) -> dict[str, dict]:
    """kind -> {n, energy_mae_meV_per_atom, forces_mae_meV_per_A, forces_rmse_meV_per_A}, plus ``all``, of a
    loaded ``model``."""
    groups: dict[str, list] = defaultdict(list)
    for frame in frames:
        groups[frame.info["cluster_kind"]].append(frame)
    groups["all"] = list(frames)
    rows = {}
    for kind, group in sorted(groups.items()):
        path = workdir / f"{kind}.extxyz"
        write(path, group, format="extxyz")
        dataset = GraphDataset.from_file(path, cutoff=model.cutoff, cache=False)
        result = evaluate_dataset(model, dataset, device="cpu")
        rows[kind] = {"n": len(group), **{k: result[k] for k in
                      ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")}}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True, help="labelled clusters cut from the model's liquids")
    parser.add_argument("--reference", type=Path, default=TEST, help="gas-phase test clusters")
    parser.add_argument("--gcp-scale", type=float, default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    liquid = read_frames(args.data)
    sets = {"liquid": [f for f in liquid if molecules_intact(f)],
            "liquid, broken molecule": [f for f in liquid if not molecules_intact(f)],
            "gas-phase test": read_frames(args.reference)}
    sets = {name: frames for name, frames in sets.items() if frames}
    if args.gcp_scale is not None:
        sets = {name: add_gcp_to_labels(frames, "b3lyp", "def2-SVP", args.gcp_scale) for name, frames in sets.items()}
    model = without_dispersion(load_model(args.model, device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        result = {}
        for name, frames in sets.items():
            (Path(tmp) / name).mkdir()
            result[name] = errors_by_kind(model, frames, Path(tmp) / name)
    command = (f"python benchmarks/electrolyte/errors_by_kind.py --model {args.model} --data {args.data}"
               + (f" --gcp-scale {args.gcp_scale}" if args.gcp_scale is not None else "")
               + f" --output {args.output}")
    meta = {"date": datetime.date.today().isoformat(), "model": args.model, "data": str(args.data),
            "reference": str(args.reference), "gcp_scale": args.gcp_scale, "command": command}
    args.output.with_suffix(".json").write_text(json.dumps({**meta, "errors": result}, indent=1) + "\n")
    lines = [f"# Errors of {args.model} by cluster kind: clusters from its own liquids vs gas-phase test clusters", "",
             f"Date {meta['date']}; CPU; dispersion off (the fit's level)"
             + (f"; labels + {args.gcp_scale} × gCP" if args.gcp_scale is not None else "") + ".",
             f"Command: `{command}`", "",
             "| set | kind | clusters | energy MAE (meV/atom) | force MAE (meV/Å) | force RMSE (meV/Å) |",
             "|---|---|---|---|---|---|"]
    for name, rows in result.items():
        for kind, row in rows.items():
            lines.append(f"| {name} | {kind} | {row['n']} | {row['energy_mae_meV_per_atom']:.1f} | "
                         f"{row['forces_mae_meV_per_A']:.1f} | {row['forces_rmse_meV_per_A']:.1f} |")
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
