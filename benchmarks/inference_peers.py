"""Peer models for benchmarks/inference.py, measured with the same boxes and method: MACE and SevenNet-0.

Each peer runs in its own process because MACE pins e3nn 0.4.4 (its environment goes first on PYTHONPATH) while
SevenNet and matsim use e3nn >= 0.5. Prints one JSON row per box on stdout. Called by inference.py; by hand:

    python benchmarks/inference_peers.py --peer mace --repeats 20
    python benchmarks/inference_peers.py --peer sevenn --repeats 20

MACE: untrained weights (cost does not depend on them) with the MACE-MP-0 "small" architecture (128x0e hidden,
max_ell 3, correlation 3, 2 interactions, r_max 6 Å) for our 6 elements; SevenNet-0 (11 Jul 2024) ships its weights.
Energy + forces + stress, float32, e3nn backends, neighbor list built once outside the timing, median of the calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import ase.io
import torch

from inference import TILINGS, liquid_path  # noqa: E402  (same directory)
from md_speed_peers import package_versions  # noqa: E402

SPECIES = [1, 3, 6, 8, 9, 15]


def untrained_mace(device: str = "cuda"):
    """An untrained MACE model with the MACE-MP-0 "small" architecture for our 6 elements, float32 on ``device``."""
    import numpy as np
    from e3nn import o3
    from mace import modules

    return modules.ScaleShiftMACE(
        r_max=6.0, num_bessel=10, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(SPECIES), hidden_irreps=o3.Irreps("128x0e"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(SPECIES)), avg_num_neighbors=40.0,
        atomic_numbers=SPECIES, correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    ).to(device).float()


def mace_model_and_batch(atoms):
    """An untrained MACE-MP-0-small-shaped model and the batch of ``atoms`` on CUDA."""
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    model = untrained_mace("cuda")
    z_table = AtomicNumberTable(SPECIES)
    config = mace_data.config_from_atoms(atoms)
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=6.0)
    batch = torch_geometric.Batch.from_data_list([graph]).to("cuda")

    def call():
        batch_dict = batch.clone().to_dict()
        out = model(batch_dict, compute_stress=True, training=False)
        return out["forces"]

    return model, call, int(graph["edge_index"].shape[1])


def sevenn_model_and_batch(atoms):
    """SevenNet-0 (shipped weights) and the graph of ``atoms`` on CUDA."""
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.calculator import SevenNetCalculator
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    calc = SevenNetCalculator("7net-0", device="cuda")
    model = calc.model
    base = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False))

    def call():
        data = base.clone().to("cuda")
        return model(data)["inferred_force"]

    return model, call, int(base["edge_index"].shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=["mace", "sevenn"], required=True)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    base = ase.io.read(liquid_path())
    build = {"mace": mace_model_and_batch, "sevenn": sevenn_model_and_batch}[args.peer]
    for label, tiling in TILINGS.items():
        atoms = base * tiling
        row = {"model": {"mace": "MACE (MP-0 small arch.)", "sevenn": "SevenNet-0"}[args.peer], "box": label,
               "atoms": len(atoms)}
        try:
            model, call, edges = build(atoms)
            row["parameters"] = sum(p.numel() for p in model.parameters())
            row["edges"] = edges
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call().sum().item()
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            row.update({"E+F+S atom-steps/s": len(atoms) / seconds, "E+F+S ms": 1e3 * seconds,
                        "E+F+S peak GiB": torch.cuda.max_memory_allocated() / 2**30})
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:  # TorchScript wraps OOM in a RuntimeError
            if "out of memory" not in str(exc):
                raise
            row["E+F+S atom-steps/s"] = "OOM"
        row["versions"] = package_versions(args.peer)
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
