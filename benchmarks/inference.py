"""Inference speed and memory of matsim potentials on liquid electrolyte boxes (run on the GPU machine).

Boxes: the 160-atom EC/EMC liquid of ../shared/data/ec_emc_xtb tiled to ~1k, 5k, 20k and 50k atoms. For each model
and box: energy + forces (+ stress) through :class:`matsim.models.forcefield.ForceField`, neighbor list built once
(model-only time, as the anchor measurements in ../shared/anchors/PUBLISHED_BASELINES.md), float32, median of
``--repeats`` calls after warm-up; throughput in atoms x steps / s; peak GPU memory. Then the largest box that fits
(doubling until out of memory). Models have untrained weights: their cost does not depend on the values.

    python benchmarks/inference.py --output benchmarks/inference      # writes inference.json / .md
"""

from __future__ import annotations

import argparse
import statistics
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
    args = parser.parse_args()
    device = torch.device("cuda")
    base = ase.io.read(liquid_path())
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create(name, **MODELS[name]).to(device=device, dtype=torch.float32).eval()
        forcefield = ForceField(model)
        n_params = sum(p.numel() for p in model.parameters())
        for label, tiling in TILINGS.items():
            atoms = base * tiling
            graph = AtomGraph.build(atoms, cutoff=model.cutoff, dtype=torch.float32, device=device)
            row = {"model": name, "parameters": n_params, "box": label, "atoms": len(atoms), "edges": graph.edge_index.shape[1]}
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
        rows.append(largest_box(name, forcefield, base, args.max_atoms, device))
        print(rows[-1], flush=True)
    meta = provenance(["e3nn", "torch-geometric", "vesin-torch"])
    columns = ["model", "parameters", "box", "atoms", "edges", "E+F atom-steps/s", "E+F peak GiB",
               "E+F+S atom-steps/s", "E+F+S ms", "E+F+S peak GiB"]
    notes = ("float32, eager PyTorch (no torch.compile, no custom kernels), neighbor list built once outside the "
             "timing. The 'largest' rows give the biggest tiled box for which E+F+S ran without running out of memory. "
             "Anchors (MACE, SevenNet-0) measured on the same machine type with the same method are in "
             "../shared/anchors/PUBLISHED_BASELINES.md.")
    write_results(args.output, "Inference speed on liquid electrolyte boxes", "python benchmarks/inference.py",
                  rows, columns, meta, notes)


def largest_box(name: str, forcefield: ForceField, base, max_atoms: int, device: torch.device) -> dict:
    """Grow the box (doubling one axis at a time) until E+F+S runs out of memory; report the last that fitted."""
    tiling, fitted = [4, 4, 4], 0
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
        tiling[tiling.index(min(tiling))] *= 2
    return {"model": name, "box": "largest that fits", "atoms": fitted}


if __name__ == "__main__":
    main()
