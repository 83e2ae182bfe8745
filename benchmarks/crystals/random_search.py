"""Random structure search on perov_5 compositions, relaxed and scored by the CHGNet oracle: the baseline that
UniMat / CDVAE samples are compared with at equal compute (stable structures per 1,000 candidates, issue 8).

The run is the library's own ``matsim generate`` with ``baseline: random_search`` (see
``examples/generate_random_search.yaml``): ``--n`` candidates whose cell compositions are drawn uniformly with
replacement from the perov_5 pool (the training set's composition distribution, with its atom counts), random
symmetric crystals from pyxtal (random compatible space group, volume factor 1.1), then the same scoring as model
samples: validity, coverage (CDVAE's perov_5 cutoffs), uniqueness, novelty against the pool and, with the CHGNet
oracle, relaxation (FIRE + FrechetCellFilter, the hull module's default steps, fmax and time limit), energy above
the hull of the elements and the pool's phases, stable / S.U.N. fractions and their yield per 1,000 candidates
(failed candidates stay in every denominator).

Run from the repository root (writes NAME.json / NAME.md next to this script, the run under --out):
    python benchmarks/crystals/random_search.py --n 100 --seed 0     # 25 min on 1 thread of a shared 2-core VM
    python benchmarks/crystals/random_search.py --n 1000 --seed 0 --name random_search_perov5_1000   # full run
Sampling takes ~0.2 s per candidate; the time is the CHGNet relaxations on the CPU (~3.5 s each on one thread):
the candidates, the pool's crystals in the candidates' chemical systems and the elemental prototypes (309 references
for 100 candidates), so the full run takes several hours on one thread (set OMP_NUM_THREADS to the free cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, write_results  # noqa: E402

from matsim.generate.config import GenerateConfig  # noqa: E402
from matsim.generate.pipeline import generate  # noqa: E402

COLUMNS = ["candidates", "n_failed", "wall_time_s", "structures_per_s", "scoring_time_s", "validity",
           "struct_validity", "comp_validity", "cov_r", "cov_p", "uniqueness", "novelty", "n_hull_evaluated",
           "n_hull_failures", "mean_e_above_hull", "stable_0.0", "stable_0.1", "sun_0.0", "sun_0.1",
           "stable_per_1000_0.0", "stable_per_1000_0.1", "sun_per_1000_0.0", "sun_per_1000_0.1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "perov_5" / "pool.csv",
                        help="perov_5 pool.csv: compositions, reference set and known phases")
    parser.add_argument("--n", type=int, default=100, help="candidates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", choices=["chgnet", "none"], default="chgnet")
    parser.add_argument("--no-coverage", action="store_true", help="skip COV-R/P (CrystalNN fingerprints)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-random-search")
    parser.add_argument("--name", default="random_search_perov5", help="stem of the result files")
    args = parser.parse_args()

    output = args.out / f"n{args.n}-seed{args.seed}"
    config = GenerateConfig.model_validate({
        "baseline": "random_search", "compositions_from": str(args.data.resolve()), "num_samples": args.n,
        "batch_size": 50, "seed": args.seed,
        "score": {"reference": str(args.data.resolve()), "dataset": None if args.no_coverage else "perov_5",
                  "oracle": args.oracle}})
    result = generate(config, output)

    metrics, baseline = result["metrics"], result["baseline"]
    row = {"candidates": args.n, "n_failed": result["n_failed"],
           **{k: result["sampling"][k] for k in ("wall_time_s", "structures_per_s")},
           "scoring_time_s": result["scoring_time_s"]}
    row |= {k: metrics[k] for k in COLUMNS if k in metrics}
    meta = provenance(["pymatgen", "pyxtal", "chgnet", "ase", "smact", "matminer"]) | {
        "data": str(args.data), "seed": args.seed, "oracle": args.oracle, "torch_threads": torch.get_num_threads(),
        "output": str(output), "sampler": result["sampling"]["settings"], "hull_settings": metrics.get("hull_settings"),
        "compositions": {k: baseline["compositions"][k] for k in ("n_crystals", "n_distinct", "drawn")},
        "mean_attempts": baseline["mean_attempts"], "space_groups_used": len(baseline["space_groups"]),
        "failures": baseline["failures"][:20]}
    write_results(HERE / args.name, "Random structure search (pyxtal) on perov_5 compositions, CHGNet hull",
                  command_line("benchmarks/crystals/random_search.py"), [row], COLUMNS, meta,
                  notes="Fractions are over all candidates; per-1,000 yields count stable (E_hull <= t eV/atom) and "
                        "S.U.N. candidates per 1,000 generated, failed and invalid ones included. E_hull is against "
                        "the CHGNet hull of the elemental prototypes and the pool's crystals in each chemical system "
                        "only (no binary competing phases; perov_5's crystals are cubic perovskites, many of them "
                        "unstable), so it is a loose hull: a candidate that relaxes below its composition's pool "
                        "perovskite counts as stable. Compare generators on the same hull, not with MP-hull numbers. "
                        "Sampling wall time is pyxtal time on one CPU process; scoring time includes every "
                        "relaxation.")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
