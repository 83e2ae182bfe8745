"""Score sample folders written by ``matsim generate`` (e.g. on the GPU machine) and tabulate them with their
sampling speed: the CDVAE metrics of each folder's first ``--n`` samples against a reference (training) CSV, with coverage and
EMDs against ``--test`` when given.

    python benchmarks/crystals/score_samples.py runs/bench-cdvae/s-fast runs/bench-cdvae/s-paper \\
        --reference ../shared/data/perov_5/pool.csv --dataset perov_5 --n 500 --name cdvae_perov5

``--valid-split 0.1 --split-seed 0`` re-makes a training run's seeded split of ``--reference`` (the
``data.split: {valid: 0.1, seed: 0}`` of the configs): the training rows are then the novelty reference and the
validation rows, which the model never saw, the coverage distribution.

Writes ``NAME.json`` and ``NAME.md`` next to this script. Missing CIFs (failed decodes) count as invalid samples.
``--cache DIR`` keeps each folder's row in DIR as soon as it is scored and reuses it on the next run with the same
settings: folders can be scored in separate processes (or calls) and tabulated together at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, write_results  # noqa: E402

COLUMNS = ["samples", "sampler", "decoder_calls", "n_scored", "structures_per_s", "validity", "struct_validity",
           "comp_validity", "cov_r", "cov_p", "emd_density", "emd_n_elements", "uniqueness", "novelty"]


def decoder_calls(settings: dict) -> int | None:
    """Network evaluations per sample: CDVAE's levels × steps per level, or a diffusion sampler's steps."""
    if "n_levels" in settings:
        return settings["n_levels"] * settings["steps_per_level"]
    return settings.get("steps")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (cache keys do not depend on where the data file lies)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    from matsim.datasets.crystals import CrystalDataset
    from matsim.datasets.splits import random_split
    from matsim.metrics.crystal import evaluate_crystals, fingerprints, read_structures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, required=True, help="training CSV (distribution and novelty)")
    parser.add_argument("--test", type=Path, default=None,
                        help="held-out CSV: the distribution for coverage and EMDs (default: --reference)")
    parser.add_argument("--dataset", default=None, help="coverage cutoffs: perov_5, carbon_24 or mp_20")
    parser.add_argument("--n", type=int, default=None, help="score only the first N samples of each folder")
    parser.add_argument("--name", default="samples")
    parser.add_argument("--valid-split", type=float, default=None,
                        help="validation fraction of a seeded split of --reference (coverage on those rows)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes for the coverage fingerprints")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping each scored folder's row")
    args = parser.parse_args()
    if args.valid_split is not None and args.test is not None:
        parser.error("give --test or --valid-split, not both")
    training = CrystalDataset.from_csv(args.reference).structures()
    distribution = CrystalDataset.from_csv(args.test).structures() if args.test else training
    if args.valid_split is not None:
        split = random_split(len(training), args.valid_split, seed=args.split_seed)
        training, distribution = [training[i] for i in split.train], [training[i] for i in split.valid]
    settings_key = json.dumps([file_digest(args.reference), file_digest(args.test) if args.test else None,
                               args.dataset, args.n, args.valid_split, args.split_seed])
    reference_fps = None
    rows, checkpoints = [], set()
    for folder in args.folders:
        info = json.loads((folder / "metrics.json").read_text())
        n = min(info["n_requested"], args.n or info["n_requested"])
        sampling = info["sampling"]
        cached = None
        if args.cache is not None:
            key = hashlib.sha256(f"{settings_key}{folder.name}{info.get('checkpoint')}".encode()).hexdigest()[:12]
            cached = args.cache / f"{folder.name}-{key}.json"
        if cached is not None and cached.is_file():
            row = json.loads(cached.read_text())
        else:
            if reference_fps is None and args.dataset:
                reference_fps = fingerprints(distribution, args.workers)
            paths = [folder / "structures" / f"{i:06d}.cif" for i in range(n)]
            samples = [read_structures([p])[0] if p.exists() else None for p in paths]
            metrics = evaluate_crystals(samples, reference=distribution, training=training, dataset=args.dataset,
                                        workers=args.workers, reference_fingerprints=reference_fps).to_dict()
            settings = sampling["settings"]
            row = {"samples": folder.name, "sampler": ", ".join(f"{k} {v}" for k, v in settings.items()),
                   "decoder_calls": decoder_calls(settings), "n_scored": n,
                   "structures_per_s": sampling["structures_per_s"]}
            row |= {k: metrics[k] for k in COLUMNS if k in metrics}
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(row))
        rows.append(row)
        source = info.get("checkpoint") or {"sha256": None, "epoch": None}  # None: a baseline (random search)
        checkpoints.add((source["sha256"], source["epoch"], sampling["device"]))
        print(json.dumps(row), flush=True)
    meta = provenance(["pymatgen", "smact", "matminer"]) | {
        "reference": str(args.reference), "test": str(args.test) if args.test else None, "dataset": args.dataset,
        "split": {"valid": args.valid_split, "seed": args.split_seed, "n_train": len(training),
                  "n_distribution": len(distribution)} if args.valid_split is not None else None,
        "checkpoints": [{"sha256": s, "epoch": e, "sampled_on": d}
                        for s, e, d in sorted(checkpoints, key=lambda c: tuple(map(str, c)))]}
    command = command_line("benchmarks/crystals/score_samples.py")
    write_results(HERE / args.name, f"Generated crystals scored against {args.reference.name}", command, rows,
                  COLUMNS, meta, notes="Fractions over all scored samples (failed decodes count as invalid); "
                  "structures_per_s is the sampling speed on the device named in checkpoints.")


if __name__ == "__main__":
    main()
