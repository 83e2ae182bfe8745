"""UniMat on perov_5: train with an epoch budget → sample with several samplers (unconditional, and conditioned on
one composition) → write the sample folders and a table of sampling speed. Scoring is separate:
``benchmarks/crystals/score_samples.py`` on the folders this script writes.

The pipeline is the library's own (:class:`matsim.train.generative.GenerativeTrainer` with
``examples/train_unimat_perov5.yaml``, then :func:`matsim.generate.pipeline.generate` per sampler), so the numbers
are those ``matsim train`` / ``matsim generate`` give. The question it answers: how much of DDPM's quality does a
few-step deterministic DDIM keep, at what speed-up? Samplers (``steps``, ``eta``):

- ``ddpm``: 1000, 1 (the paper's ancestral sampler: one network call per training time step);
- ``ddim100``, ``ddim50``, ``ddim20``: 100 / 50 / 20 evenly spaced steps, deterministic (eta 0);
- ``cond_ddim50``: ddim50 conditioned on ``--composition`` (default SrTiO3), classifier-free guidance ``--guidance``.

Data: ../shared/data/perov_5/pool.csv (CDVAE's perov_5 validation split, 3787 crystals, used as the pool; it is both
the training set and the reference distribution of the scoring).

Run on the GPU machine (from the repository root; writes unimat.json / unimat.md next to this script and the run
and samples under --out; ``--data`` where ../shared/data is not beside the checkout):
    python benchmarks/crystals/unimat.py --epochs 300 --num-samples 10000 --out runs/bench-unimat
    python benchmarks/crystals/unimat.py --skip-train --out runs/bench-unimat --samplers ddim50 cond_ddim50
then score:
    python benchmarks/crystals/score_samples.py runs/bench-unimat/samples-* \\
        --reference ../shared/data/perov_5/pool.csv --dataset perov_5 --n 2000 --name unimat_perov5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, train_generative, write_results  # noqa: E402

from matsim.generate.config import GenerateConfig  # noqa: E402
from matsim.generate.pipeline import generate  # noqa: E402

SAMPLERS = {
    "ddpm": {"steps": 1000, "eta": 1.0},
    "ddim100": {"steps": 100, "eta": 0.0},
    "ddim50": {"steps": 50, "eta": 0.0},
    "ddim20": {"steps": 20, "eta": 0.0},
    "cond_ddim50": {"steps": 50, "eta": 0.0},
}
COLUMNS = ["sampler", "condition", "network_calls", "n", "n_failed", "wall_time_s", "structures_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "train_unimat_perov5.yaml")
    parser.add_argument("--data", type=Path, default=None, help="perov_5 pool.csv (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-unimat")
    parser.add_argument("--epochs", type=int, default=300, help="training epoch budget")
    parser.add_argument("--skip-train", action="store_true", help="reuse --out/train/best.pt")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="samples denoised together")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--composition", default="SrTiO3", help="condition of the cond_* samplers")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of cond_* samplers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    run_dir = args.out / "train"
    overrides = [f"run_dir={run_dir.resolve()}", f"training.max_epochs={args.epochs}", "training.progress=false"]
    if args.data is not None:
        overrides.append(f"data.train={args.data.resolve()}")
    config, train_time = train_generative(args.config, overrides, args.skip_train)

    rows = []
    for name in args.samplers:
        conditional = name.startswith("cond_")
        settings = SAMPLERS[name] | ({"guidance": args.guidance} if conditional else {})
        condition = {"composition": args.composition} if conditional else None
        gen = GenerateConfig.model_validate({
            "checkpoint": str(run_dir / "best.pt"), "num_samples": args.num_samples, "batch_size": args.batch_size,
            "seed": args.seed, "sampler": settings, "condition": condition, "score": None})
        result = generate(gen, args.out / f"samples-{name}")
        calls = settings["steps"] * (2 if conditional and args.guidance != 1.0 else 1)
        row = {"sampler": name, "condition": args.composition if conditional else None, "network_calls": calls,
               "n": args.num_samples, "n_failed": result["n_failed"],
               **{k: result["sampling"][k] for k in ("wall_time_s", "structures_per_s")}}
        rows.append(row)
        print(f"{name}: {row['structures_per_s']:.1f} structures/s, {row['n_failed']} failed", flush=True)

    meta = provenance(["pymatgen"]) | {
        "data": str(config.data.train), "epochs": args.epochs, "train_time_s": train_time,
        "checkpoint": str(run_dir / "best.pt"), "seed": args.seed, "batch_size": args.batch_size,
        "guidance": args.guidance,
    }
    command = command_line("benchmarks/crystals/unimat.py")
    write_results(HERE / "unimat", "UniMat on perov_5: sampling speed per sampler", command, rows, COLUMNS, meta,
                  notes="Wall time is model time only (CIF writing excluded), on the device above. Score the "
                        "sample folders with benchmarks/crystals/score_samples.py.")


if __name__ == "__main__":
    main()
