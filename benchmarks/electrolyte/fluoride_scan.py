"""Energy along PF6⁻ → PF5 + F⁻ (the fluoride moving to a Li⁺) from DFT and from a model (issue 6: why did PF6⁻
decompose in the model's LP30 liquid?).

    python benchmarks/electrolyte/fluoride_scan.py build --clusters 2 --output runs/electrolyte/fluoride_scan.extxyz
    matsim data label runs/electrolyte/fluoride_scan.extxyz --method dft --max-scf-cycles 300 -j 1 \
        -o runs/electrolyte/fluoride_scan-dft.extxyz
    python benchmarks/electrolyte/fluoride_scan.py report runs/electrolyte/fluoride_scan-dft.extxyz \
        --model electrolyte-small --output benchmarks/electrolyte/results/fluoride_scan

``build``: from held-out contact ion pairs (Li⁺ touching PF6⁻, plus a solvent; ``dft-test.extxyz.xz``), the
fluorine of PF6⁻ nearest to the Li⁺ is moved away from the P along the P→F direction, so that the P–F distance
grows by each of ``STRETCH_A``; all other atoms stay put (a scan, not a relaxed path). ``report``: the energy of
each frame relative to the unstretched one (eV), DFT (B3LYP/def2-SVP, no dispersion) against the model with its
dispersion term off, per cluster.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

DATA = Path(__file__).parent / "data" / "dft-test.extxyz.xz"
#: P–F stretches (Å) added to the cluster's own bond length; 0 is the cluster as labelled.
STRETCH_A = (0.0, 0.2, 0.4, 0.7, 1.0, 1.5)


def fluoride_scan(cluster: Atoms, stretches: tuple[float, ...] = STRETCH_A) -> list[Atoms]:
    """Frames of ``cluster`` with the Li-nearest F of its PF6 moved out along P→F by each stretch (Å)."""
    symbols = np.array(cluster.get_chemical_symbols())
    lithium = np.flatnonzero(symbols == "Li")[0]
    phosphorus = np.flatnonzero(symbols == "P")[0]
    fluorines = np.flatnonzero((symbols == "F") & (cluster.arrays["mol_id"] == cluster.arrays["mol_id"][phosphorus]))
    moving = fluorines[np.argmin(np.linalg.norm(cluster.positions[fluorines] - cluster.positions[lithium], axis=1))]
    bond = cluster.positions[moving] - cluster.positions[phosphorus]
    unit = bond / np.linalg.norm(bond)
    frames = []
    for stretch in stretches:
        frame = Atoms(cluster.numbers, cluster.positions.copy())
        frame.positions[moving] += stretch * unit
        frame.info.update(charge=int(cluster.info["charge"]), source=cluster.info["source"], stretch_A=stretch,
                          p_f_A=float(np.linalg.norm(bond) + stretch),
                          li_f_A=float(np.linalg.norm(frame.positions[moving] - frame.positions[lithium])))
        frame.arrays["mol_id"] = cluster.arrays["mol_id"].copy()
        frame.arrays["formal_charge"] = cluster.arrays["formal_charge"].copy()
        frames.append(frame)
    return frames


def build(n_clusters: int, output: Path) -> None:
    pairs = [a for a in read(DATA, ":") if a.info["cluster_kind"] == "contact_ion_pair"
             and "P" in a.get_chemical_symbols() and "Li" in a.get_chemical_symbols()]
    pairs.sort(key=len)
    frames = [frame for cluster in pairs[:n_clusters] for frame in fluoride_scan(cluster)]
    write(output, frames, format="extxyz")
    print(f"{output}: {len(frames)} frames from {min(n_clusters, len(pairs))} contact ion pairs")


def report(labelled: Path, model: str, output: Path) -> None:
    import torch

    from matsim.core.graph import AtomGraph
    from matsim.models import load_model
    from matsim.models.forcefield import ForceField
    from matsim.train.distill import without_dispersion

    forcefield = ForceField(without_dispersion(load_model(model, device="cpu", dtype=torch.float64).eval()))
    by_source: dict[str, list[Atoms]] = defaultdict(list)
    for frame in read(labelled, ":"):
        by_source[frame.info["source"]].append(frame)
    rows = []
    for source, frames in by_source.items():
        frames.sort(key=lambda f: f.info["stretch_A"])
        if frames[0].info["stretch_A"] != 0.0:
            continue  # no reference frame
        graphs = [AtomGraph.build([f], cutoff=forcefield.potential.cutoff, dtype=torch.float64) for f in frames]
        model_energy = [float(forcefield(g, compute_forces=False)["energy"][0]) for g in graphs]
        dft_energy = [f.get_potential_energy() for f in frames]
        for frame, e_dft, e_model in zip(frames, dft_energy, model_energy):
            rows.append({"source": source, "atoms": len(frame), "p_f_A": frame.info["p_f_A"],
                         "li_f_A": frame.info["li_f_A"],
                         "stretch_A": frame.info["stretch_A"], "dft_eV": e_dft - dft_energy[0],
                         "model_eV": e_model - model_energy[0]})
    command = (f"python benchmarks/electrolyte/fluoride_scan.py report {labelled} --model {model} "
               f"--output {output}")
    output.with_suffix(".json").write_text(json.dumps(
        {"date": datetime.date.today().isoformat(), "model": model, "command": command, "rows": rows}, indent=1))
    lines = ["# PF6⁻ fluoride stretched towards Li⁺: energy relative to the intact cluster, DFT vs model", "",
             f"Date {datetime.date.today().isoformat()}; CPU; B3LYP/def2-SVP (no dispersion) vs {model} with its"
             " dispersion term off. Command: `" + command + "`", "",
             "| cluster | atoms | P–F (Å) | Li–F (Å) | ΔE DFT (eV) | ΔE model (eV) | model − DFT (eV) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['atoms']} | {r['p_f_A']:.2f} | {r['li_f_A']:.2f} | {r['dft_eV']:+.3f} | "
                     f"{r['model_eV']:+.3f} | {r['model_eV'] - r['dft_eV']:+.3f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("--clusters", type=int, default=2)
    build_parser.add_argument("--output", type=Path, required=True)
    report_parser = sub.add_parser("report")
    report_parser.add_argument("labelled", type=Path)
    report_parser.add_argument("--model", default="electrolyte-small")
    report_parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "build":
        build(args.clusters, args.output)
    else:
        report(args.labelled, args.model, args.output)


if __name__ == "__main__":
    main()
