"""DiffSpectra on a SPECTRA.h5 split: train on its train rows (validate on its valid rows) → elucidate its test
spectra (sampled candidates ranked by frequency, optionally GFN2-rescored) → top-k exact match and Tanimoto
similarity with :mod:`matsim.metrics.spectra`, beside the retrieval baseline (nearest training spectra by cosine)
on the same split.

The pipeline is the library's own (:class:`matsim.train.generative.GenerativeTrainer` with
``examples/train_diffspectra_qm9.yaml``, :func:`matsim.generate.elucidation.elucidate_spectra`,
:class:`matsim.models.spectra_retrieval.SpectraRetrieval`), so the numbers are those ``matsim train`` /
``matsim elucidate`` give.

Make the data and split first (see benchmarks/spectra/README.md), then run on the GPU machine from the repository
root (writes diffspectra.json / diffspectra.md next to this script, the run under --out):
    python benchmarks/spectra/diffspectra.py --spectra runs/qm9_spectra.h5 --split runs/qm9_split.json \\
        --epochs 200 --samples 100 -k 10 --out runs/bench-diffspectra
    python benchmarks/spectra/diffspectra.py --spectra ... --split ... --skip-train --max-test 200 --rescore
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from _report import command_line, logged_training, provenance, train_generative, write_results  # noqa: E402

from matsim.datasets.spectra import load_spectra_split, read_spectra  # noqa: E402
from matsim.generate.elucidation import elucidate_spectra  # noqa: E402
from matsim.metrics.spectra import evaluate_elucidation  # noqa: E402
from matsim.models import load_model  # noqa: E402
from matsim.models.spectra_retrieval import SpectraRetrieval  # noqa: E402

COLUMNS = ["method", "n", "top_1", "top_3", "top_5", "top_10", "validity", "uniqueness", "top1_tanimoto",
           "max_tanimoto", "top1_maccs", "wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "train_diffspectra_qm9.yaml")
    parser.add_argument("--spectra", type=Path, required=True, help="SPECTRA.h5 (e.g. GFN2 IR of QM9)")
    parser.add_argument("--split", type=Path, required=True, help="its split (matsim spectra split)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-diffspectra")
    parser.add_argument("--epochs", type=int, default=200, help="training epoch budget")
    parser.add_argument("--skip-train", action="store_true", help="reuse --out/train/best.pt")
    parser.add_argument("-k", type=int, default=10, help="candidates kept per spectrum")
    parser.add_argument("--samples", type=int, default=100, help="molecules sampled per test spectrum")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: all)")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance weight")
    parser.add_argument("--rescore", action="store_true", help="also rank by the candidates' GFN2 spectra (slow)")
    parser.add_argument("--max-test", type=int, default=None, help="elucidate only the first N test spectra")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="diffspectra", help="results file stem next to this script")
    parser.add_argument("--spectra-per-batch", type=int, default=16,
                        help="test spectra sampled together (one batch of this many x --samples molecules)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides of the training config (e.g. data.structures=STRUCTURES.h5)")
    args = parser.parse_args()

    split = load_spectra_split(args.split)
    run_dir = args.out / "train"
    overrides = [f"run_dir={run_dir.resolve()}", f"training.max_epochs={args.epochs}", "training.progress=false",
                 f"data.train={args.spectra.resolve()}", f"data.split.train_indices={split.train}",
                 f"data.split.valid_indices={split.valid}", *args.set]
    config, train_time = train_generative(args.config, overrides, args.skip_train)
    epochs, logged_time = logged_training(run_dir)
    train_time = logged_time if train_time is None else train_time

    data = read_spectra(args.spectra)
    test = split.test[: args.max_test]
    truths = [data.smiles[i] for i in test]
    queries = data.ir[test]
    rows = []

    t0 = time.perf_counter()
    retrieval = SpectraRetrieval.from_file(args.spectra, rows=split.train).rank(queries, data.grid, k=args.k)
    rows.append(_row("retrieval (cosine)", truths, [[c.smiles for c in r] for r in retrieval],
                     time.perf_counter() - t0))

    model = load_model(run_dir / "best.pt")
    for rescore in (False, True) if args.rescore else (False,):
        t0 = time.perf_counter()
        # every distinct valid molecule is kept (k = samples), so the frequencies of a spectrum's candidates add up
        # to its fraction of valid samples; the metrics then use the first k
        ranked = elucidate_spectra(model, queries, k=args.samples, samples=args.samples, rescore=rescore,
                                   seed=args.seed, spectra_per_batch=args.spectra_per_batch,
                                   guidance=args.guidance, steps=args.steps)
        name = "diffspectra" + (" + GFN2 rescoring" if rescore else " (frequency)")
        rows.append(_row(name, truths, [[c.smiles for c in r[: args.k]] for r in ranked], time.perf_counter() - t0))
        if not rescore:
            rows[-1]["validity"] = float(np.mean([sum(c.score for c in r) for r in ranked]))
        print(rows[-1], flush=True)

    meta = provenance(["rdkit", "tblite"]) | {
        "data": str(args.spectra), "split": str(args.split), "n_train": len(split.train), "n_test": len(test),
        "structures": str(config.data.structures), "spectra_repeat": config.data.spectra_repeat,
        "epochs": epochs, "train_time_s": train_time, "checkpoint": str(run_dir / "best.pt"),
        "samples_per_spectrum": args.samples, "k": args.k, "steps": args.steps, "guidance": args.guidance,
        "spectra_per_batch": args.spectra_per_batch, "seed": args.seed,
    }
    write_results(HERE / args.name, "DiffSpectra vs retrieval: structure from IR spectra (test split)",
                  command_line("benchmarks/spectra/diffspectra.py"), rows, COLUMNS, meta,
                  notes="top-k: exact match by tautomer-canonical InChIKey (stereo ignored). Tanimoto: Morgan "
                        "(r 2, 2048 bits) of the first / best of the first 10 candidates to the truth. Retrieval "
                        "cannot propose unseen molecules, so its exact-match accuracy on a split by molecule is 0. "
                        "validity: of retrieval's candidates; of DiffSpectra's samples (valid samples / all "
                        "samples, frequency ranking), since elucidation keeps valid molecules only.")


def _row(method: str, truths: list[str], candidates: list[list[str]], seconds: float) -> dict:
    metrics = evaluate_elucidation(list(zip(truths, candidates)))
    values = metrics.to_dict()
    top_k = values.pop("top_k")
    values.pop("top1_mces_distance")
    return {"method": method, **top_k, **values, "wall_time_s": seconds}


if __name__ == "__main__":
    main()
