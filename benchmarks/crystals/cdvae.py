"""CDVAE on perov_5: train with an epoch budget → sample 10,000 crystals with several Langevin settings → score.

The pipeline is the library's own (:class:`matsim.train.generative.GenerativeTrainer` with
``examples/train_cdvae_perov5.yaml``, then :func:`matsim.generate.pipeline.generate` per sampler setting), so the
numbers are those ``matsim train`` / ``matsim generate`` give. For each sampler it records sampling wall time,
structures/s and the CDVAE metrics (validity, COV-R/P with CDVAE's perov_5 cutoffs, density and #elements EMDs,
uniqueness, novelty). The question it answers: is a sampler ≥ 10x cheaper than the paper's 50 x 100 steps
equally valid? Samplers (``n_levels x steps_per_level``, ``step_lr``):

- ``paper``: 50 x 100, 1e-4 (CDVAE's setting; 5000 decoder calls);
- ``fast``: 50 x 10, 1e-4 (10x fewer calls);
- ``fast_lr``: 50 x 10, 1e-3 (10x fewer calls, 10x larger steps: the same integrated step per level);
- ``fast_denoise``: 50 x 10, 1e-3, plus a final noise-free denoising step.

Data: ../shared/data/perov_5/pool.csv (CDVAE's perov_5 validation split, 3787 crystals, used here as the pool; it
is both the training set and the reference distribution, so coverage measures recall of the training
distribution and novelty is against it).

Run on the GPU machine (from the repository root; writes cdvae.json / cdvae.md next to this script and the run,
samples and metrics under --out; ``--data`` where ../shared/data is not beside the checkout, e.g. a carried copy):
    python benchmarks/crystals/cdvae.py --epochs 300 --num-samples 10000 --out runs/bench-cdvae
    python benchmarks/crystals/cdvae.py --data runs/cdvae-data/perov_5.csv --epochs 300 --score-n 2000
    python benchmarks/crystals/cdvae.py --skip-train --out runs/bench-cdvae --samplers fast fast_lr   # reuse a run
Scoring 10,000 samples computes 10,000 CrystalNN fingerprints on the CPU (~0.05 s each); ``--score-n`` scores
only the first samples of each set (validity included), ``--no-coverage`` skips the fingerprints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, train_generative, write_results  # noqa: E402

from matsim.generate.config import GenerateConfig  # noqa: E402
from matsim.generate.pipeline import generate  # noqa: E402

SAMPLERS = {
    "paper": {"n_levels": 50, "steps_per_level": 100, "step_lr": 1e-4},
    "fast": {"n_levels": 50, "steps_per_level": 10, "step_lr": 1e-4},
    "fast_lr": {"n_levels": 50, "steps_per_level": 10, "step_lr": 1e-3},
    "fast_denoise": {"n_levels": 50, "steps_per_level": 10, "step_lr": 1e-3, "final_denoise": True},
}
COLUMNS = ["sampler", "decoder_calls", "n", "wall_time_s", "structures_per_s", "validity", "struct_validity",
           "comp_validity", "cov_r", "cov_p", "emd_density", "emd_n_elements", "uniqueness", "novelty"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "train_cdvae_perov5.yaml")
    parser.add_argument("--data", type=Path, default=None, help="perov_5 pool.csv (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cdvae")
    parser.add_argument("--epochs", type=int, default=300, help="training epoch budget")
    parser.add_argument("--skip-train", action="store_true", help="reuse --out/train/best.pt")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="samples decoded together")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--score-n", type=int, default=None, help="score only the first N samples of each set")
    parser.add_argument("--no-coverage", action="store_true", help="skip COV-R/P (CrystalNN fingerprints)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    run_dir = args.out / "train"
    overrides = [f"run_dir={run_dir.resolve()}", f"training.max_epochs={args.epochs}", "training.progress=false"]
    if args.data is not None:
        overrides.append(f"data.train={args.data.resolve()}")
    config, train_time = train_generative(args.config, overrides, args.skip_train)

    rows = []
    for name in args.samplers:
        settings = SAMPLERS[name]
        output = args.out / f"samples-{name}"
        gen = GenerateConfig.model_validate({
            "checkpoint": str(run_dir / "best.pt"), "num_samples": args.num_samples, "batch_size": args.batch_size,
            "seed": args.seed, "sampler": settings, "score": None})
        result = generate(gen, output)
        row = {"sampler": name, "decoder_calls": settings["n_levels"] * settings["steps_per_level"],
               "n": args.num_samples, **{k: result["sampling"][k] for k in ("wall_time_s", "structures_per_s")}}
        row |= _score(output, config.data.train, args.score_n, not args.no_coverage)
        rows.append(row)
        print(f"{name}: {row['structures_per_s']:.1f} structures/s, validity {row['validity']:.4f}", flush=True)

    meta = provenance(["pymatgen", "smact", "matminer"]) | {
        "data": str(config.data.train), "epochs": args.epochs, "train_time_s": train_time,
        "checkpoint": str(run_dir / "best.pt"), "seed": args.seed, "batch_size": args.batch_size,
        "score_n": args.score_n,
    }
    command = command_line("benchmarks/crystals/cdvae.py")
    write_results(HERE / "cdvae", "CDVAE on perov_5: sampler speed vs. validity", command, rows, COLUMNS, meta,
                  notes="Fractions over all scored samples (failed decodes count as invalid). Wall time is model "
                        "time only (CIF writing excluded), on the device above.")


def _score(output: Path, reference: Path, score_n: int | None, coverage: bool) -> dict:
    """CDVAE metrics of the first ``score_n`` samples written in ``output/structures`` (missing files = failed)."""
    from matsim.datasets.crystals import CrystalDataset
    from matsim.metrics.crystal import evaluate_crystals, read_structures

    n = json.loads((output / "metrics.json").read_text())["n_requested"]
    n = min(n, score_n or n)
    samples = []
    for i in range(n):
        path = output / "structures" / f"{i:06d}.cif"
        samples.append(read_structures([path])[0] if path.exists() else None)
    training = CrystalDataset.from_csv(reference).structures()
    metrics = evaluate_crystals(samples, reference=training, training=training,
                                dataset="perov_5" if coverage else None).to_dict()
    return {k: metrics[k] for k in COLUMNS if k in metrics}


if __name__ == "__main__":
    main()
