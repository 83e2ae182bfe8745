"""UniMat given only a composition: how often is the sampled crystal the held-out crystal of that composition?

For the first ``--n`` held-out crystals of a training run, sample one crystal conditioned on
each one's composition and compare it with that crystal: CDVAE's match rate and normalised RMS displacement
(:func:`matsim.metrics.crystal.match_rate_and_rmse`: StructureMatcher stol 0.5, ltol 0.3, angle 10°), plus the
mean relative error of the lattice lengths. The model never saw these crystals; a composition alone does not
always fix the structure (on perov_5: which cation sits on the A site, the size of the displacement along x), so
this is a strict test of where the sampler puts atoms, not a ceiling-1 metric.

    python benchmarks/crystals/unimat_conditional.py benchmarks/crystals/checkpoints/perov_5-unimat.pt \\
        --data ../shared/data/perov_5/pool.csv --valid-split 0.1 --split-seed 0 --n 200 --samplers ddim50 ddpm200 \\
        --name unimat_conditional_perov5

The held-out crystals are the validation rows of ``--data``: from ``split.json`` when MODEL is a training run
folder, or re-made with ``--valid-split F --split-seed S`` (the ``data.split`` of the configs) for a checkpoint
file. A run trained with an explicit validation file (mp_20_subset) has none: pass that file as ``--data`` with
``--all-rows`` (its first ``--n`` rows are the targets).

Writes ``NAME.json`` / ``NAME.md`` next to this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, write_results  # noqa: E402

SAMPLERS = {"ddim50": {"steps": 50, "eta": 0.0}, "ddpm200": {"steps": 200, "eta": 1.0},
            "ddpm1000": {"steps": 1000, "eta": 1.0},
            "ddim50-w2": {"steps": 50, "eta": 0.0, "guidance": 2.0},   # classifier-free guidance 2
            "ddim50-w4": {"steps": 50, "eta": 0.0, "guidance": 4.0}}
COLUMNS = ["sampler", "n", "match_rate", "rms_normalised", "lattice_length_rel_error", "wall_time_s"]


def main() -> None:
    import numpy as np
    import torch

    from matsim.datasets.crystals import CrystalDataset
    from matsim.datasets.splits import random_split
    from matsim.metrics.crystal import match_rate_and_rmse, structure_validity
    from matsim.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="checkpoint file, or training run folder (best.pt, split.json)")
    parser.add_argument("--data", type=Path, required=True, help="the CSV the run was trained on")
    targets_from = parser.add_mutually_exclusive_group()
    targets_from.add_argument("--valid-split", type=float, default=None,
                              help="re-make the run's seeded split of --data with this validation fraction")
    targets_from.add_argument("--all-rows", action="store_true",
                              help="targets are --data's first N rows (a held-out file), not validation rows")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--samplers", nargs="+", default=["ddim50"], choices=sorted(SAMPLERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="unimat_conditional")
    args = parser.parse_args()

    run = args.model if args.model.is_dir() else None
    if run is None and not (args.all_rows or args.valid_split):
        parser.error("a checkpoint file needs --valid-split (or --all-rows): there is no split.json beside it")
    model = load_model(run / "best.pt" if run else args.model, device=args.device)
    dataset = CrystalDataset.from_csv(args.data)
    if args.all_rows:
        held_out = list(range(len(dataset)))
    elif args.valid_split:
        held_out = random_split(len(dataset), args.valid_split, seed=args.split_seed).valid
    else:
        held_out = json.loads((run / "split.json").read_text())["valid"]
    targets = dataset.structures(held_out[: args.n])
    formulas = [s.composition.formula for s in targets]
    rows = []
    for name in args.samplers:
        start = time.perf_counter()
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        samples = model.sample(len(targets), condition={"composition": formulas}, generator=generator,
                               **SAMPLERS[name])
        wall = time.perf_counter() - start
        valid = [structure_validity(s) for s in samples]
        match, rms = match_rate_and_rmse(samples, targets, valid)
        errors = [np.abs(np.array(s.lattice.abc) / np.array(t.lattice.abc) - 1).mean()
                  for s, t in zip(samples, targets) if s is not None]
        row = {"sampler": f"{name} ({SAMPLERS[name]})", "n": len(targets), "match_rate": match,
               "rms_normalised": rms, "lattice_length_rel_error": float(np.mean(errors)), "wall_time_s": wall}
        rows.append(row)
        print(json.dumps(row), flush=True)
    source = ("all rows of data" if args.all_rows else f"validation rows of a seeded split ({args.valid_split}, "
              f"seed {args.split_seed})" if args.valid_split else "validation rows of the run's split.json")
    meta = provenance(["pymatgen"]) | {"model": str(args.model), "data": str(args.data), "seed": args.seed,
                                       "targets": source, "n_held_out": len(held_out),
                                       "epoch": model.metadata.get("epoch")}
    write_results(HERE / args.name, "UniMat conditioned on held-out compositions: the held-out crystal back?",
                  command_line("benchmarks/crystals/unimat_conditional.py"), rows, COLUMNS, meta,
                  notes="match_rate: fraction of the n samples that StructureMatcher (stol 0.5, ltol 0.3, angle "
                        "10°) matches to the validation crystal of their composition; rms_normalised: mean over "
                        "matched pairs; lattice_length_rel_error: mean |a/a_target - 1| over a, b, c.")


if __name__ == "__main__":
    main()
