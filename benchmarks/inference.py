"""Inference speed and memory of matsim potentials on liquid electrolyte boxes (run on the GPU machine).

Boxes: the 160-atom EC/EMC liquid of ../shared/data/ec_emc_xtb tiled to ~1k, 5k, 20k and 50k atoms. For each model
and box: energy + forces (+ stress) through :class:`matsim.models.forcefield.ForceField`, neighbor list built once
(model-only time, as the anchor measurements in ../shared/anchors/PUBLISHED_BASELINES.md), float32, median of
``--repeats`` calls after warm-up; throughput in atoms x steps / s; peak GPU memory. Then the largest box that fits
(doubling until out of memory). Models have untrained weights: their cost does not depend on the values.

    python benchmarks/inference.py --variants eager compile compile+tf32 --peers mace sevenn --mace-pythonpath SITE
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import provenance, write_results  # noqa: E402

from matsim.core.graph import AtomGraph  # noqa: E402
from matsim.models import create  # noqa: E402
from matsim.models.forcefield import ForceField  # noqa: E402

HERE = Path(__file__).resolve().parent
LIQUID_CANDIDATES = [HERE.parent.parent / "shared/data/ec_emc_xtb/solvent_liquid.xyz", HERE / "data/solvent_liquid.xyz"]
TILINGS = {"1k": (2, 2, 2), "5k": (4, 4, 2), "20k": (8, 4, 4), "50k": (9, 6, 6)}
SPECIES = [1, 3, 6, 8, 9, 15]
MODELS = {
    # comparable in size to MACE-small / SevenNet-0 (a few hundred k parameters), cutoff 5 Å
    "bamboo": dict(cutoff=5.0, species=SPECIES, channels=64, l_max=1, num_layers=3, num_heads=4, num_radial=8,
                   radial_hidden=64, avg_num_neighbors=40.0, charges=True),
    "escaip": dict(cutoff=5.0, species=SPECIES, hidden=128, num_layers=3, num_heads=4, num_radial=16,
                   max_neighbors=96),
}


#: variant -> (torch.compile, TF32 matmuls). TF32 rounds matmul inputs to 10 mantissa bits (forces differ from
#: float32 by ~1e-3 relative): a speed option, not the default of the calculator.
VARIANTS = {"eager": (False, False), "compile": (True, False), "tf32": (False, True), "compile+tf32": (True, True)}


def add_speedups(rows: list[dict]) -> None:
    """E+F+S throughput of every row relative to MACE's on the same box (when MACE was measured)."""
    mace = {r["box"]: r.get("E+F+S atom-steps/s") for r in rows if str(r["model"]).startswith("MACE")}
    for row in rows:
        ours, theirs = row.get("E+F+S atom-steps/s"), mace.get(row["box"])
        if isinstance(ours, float) and isinstance(theirs, float):
            row["E+F+S vs MACE"] = ours / theirs


def liquid_path() -> Path:
    for path in LIQUID_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError("solvent_liquid.xyz not found; copy it to benchmarks/data/")


def measure(forcefield: ForceField, graph: AtomGraph, stress: bool, repeats: int) -> tuple[float, float]:
    """Median seconds per call and peak GPU memory (GiB) of energy + forces (+ stress)."""
    for _ in range(3):
        forcefield(graph, compute_forces=True, compute_stress=stress)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = forcefield(graph, compute_forces=True, compute_stress=stress)
        out["forces"].sum().item()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=HERE / "inference")
    parser.add_argument("--max-atoms", type=int, default=400_000, help="stop the largest-box search here")
    parser.add_argument("--peers", nargs="*", default=[], choices=["mace", "sevenn"],
                        help="also measure these peers (benchmarks/inference_peers.py) in their own processes")
    parser.add_argument("--mace-pythonpath", default=None, help="site folder with mace-torch and e3nn 0.4.4")
    parser.add_argument("--boxes", nargs="+", default=list(TILINGS), choices=list(TILINGS))
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANTS),
                        help="ways to run our models: eager float32, torch.compile, TF32 matmuls, or both")
    parser.add_argument("--no-largest", action="store_true", help="skip the largest-box search")
    args = parser.parse_args()
    device = torch.device("cuda")
    base = ase.io.read(liquid_path())
    rows = []
    for name, variant in itertools.product(args.models, args.variants):
        compile_model, tf32 = VARIANTS[variant]
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.manual_seed(0)
        model = create(name, **MODELS[name]).to(device=device, dtype=torch.float32).eval()
        if compile_model and not model.compilable:
            continue
        forcefield = ForceField(model, compile=compile_model)
        n_params = sum(p.numel() for p in model.parameters())
        label_model = name if variant == "eager" else f"{name} ({variant})"
        for label in args.boxes:
            atoms = base * TILINGS[label]
            graph = AtomGraph.build(atoms, cutoff=model.cutoff, dtype=torch.float32, device=device)
            row = {"model": label_model, "parameters": n_params, "box": label, "atoms": len(atoms),
                   "edges": graph.edge_index.shape[1]}
            for stress in (False, True):
                key = "E+F+S" if stress else "E+F"
                try:
                    seconds, peak = measure(forcefield, graph, stress, args.repeats)
                    row[f"{key} atom-steps/s"] = len(atoms) / seconds
                    row[f"{key} ms"] = 1e3 * seconds
                    row[f"{key} peak GiB"] = peak
                except torch.cuda.OutOfMemoryError:
                    row[f"{key} atom-steps/s"] = "OOM"
                torch.cuda.empty_cache()
            rows.append(row)
            print(row, flush=True)
            del graph
            torch.cuda.empty_cache()
        if not args.no_largest and variant == "eager":
            rows.append(largest_box(name, forcefield, base, args.max_atoms, device))
            print(rows[-1], flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    peer_versions: dict = {}
    for peer in args.peers:
        measured = peer_rows(peer, args.mace_pythonpath if peer == "mace" else None, args.repeats)
        for row in measured:
            peer_versions.update(row.pop("versions", {}))
        rows += measured
        print(rows[-1], flush=True)
    add_speedups(rows)
    meta = provenance(["e3nn", "torch-geometric", "vesin-torch"])
    meta["versions"].update(peer_versions)
    columns = ["model", "parameters", "box", "atoms", "edges", "E+F atom-steps/s", "E+F peak GiB",
               "E+F+S atom-steps/s", "E+F+S ms", "E+F+S peak GiB", "E+F+S vs MACE"]
    notes = ("float32, eager PyTorch unless the model column names a variant: 'compile' runs the model through "
             "torch.compile (Inductor, dynamic shapes; matsim.models.forcefield.ForceField(compile=True), compiled in the "
             "warm-up calls), 'tf32' lets matmuls use TF32 tensor cores (forces ~1e-3 relative from float32). No custom "
             "kernels. Neighbor list built once outside the timing. The 'largest' rows give the biggest tiled box for which E+F+S ran without running out of memory. "
             "MACE (untrained, MP-0 small architecture: 128x0e, max_ell 3, correlation 3, r 6 Å, our 6 elements) and "
             "SevenNet-0 (shipped weights, r 5 Å) run in the same job through benchmarks/inference_peers.py, each in "
             "its own process (MACE needs e3nn 0.4.4), with e3nn backends (no cuEquivariance).")
    write_results(args.output, "Inference speed on liquid electrolyte boxes",
                  "python benchmarks/inference.py --variants eager compile compile+tf32 --peers mace sevenn "
                  "--mace-pythonpath SITE_WITH_MACE_AND_E3NN_0.4.4",
                  rows, columns, meta, notes)


def largest_box(name: str, forcefield: ForceField, base, max_atoms: int, device: torch.device) -> dict:
    """Grow the 50k box one axis at a time (≈ 10–15 % per step) until E+F+S runs out of memory."""
    tiling, fitted = list(TILINGS["50k"]), 0
    while len(base) * tiling[0] * tiling[1] * tiling[2] <= max_atoms:
        atoms = base * tuple(tiling)
        try:
            graph = AtomGraph.build(atoms, cutoff=forcefield.potential.cutoff, dtype=torch.float32, device=device)
            forcefield(graph, compute_forces=True, compute_stress=True)["forces"].sum().item()
            fitted = len(atoms)
            del graph
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        tiling[tiling.index(min(tiling))] += 1
    return {"model": name, "box": "largest that fits (E+F+S)", "atoms": fitted}


def peer_rows(peer: str, pythonpath: str | None, repeats: int) -> list[dict]:
    """Rows of a peer model measured by inference_peers.py in its own process (and environment)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 loads its constants with pickle
    command = [sys.executable, str(HERE / "inference_peers.py"), "--peer", peer, "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0:
        print(f"peer {peer} failed:\n{result.stderr[-3000:]}", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
