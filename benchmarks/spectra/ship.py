"""Ship a DiffSpectra checkpoint as the default model of ``matsim elucidate`` (``matsim/models/pretrained/``).

    python benchmarks/spectra/ship.py benchmarks/spectra/checkpoints/diffspectra_prior.pt \
        --output matsim/models/pretrained/diffspectra-qm9.pt --caveat "..."

The weights and hyperparameters are copied unchanged; the metadata records the parent file (path, sha256), the
benchmark it was measured by, the shipping date and the ``caveat`` that ``matsim elucidate`` prints whenever the
model is used.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from matsim.core.checkpoint import load_checkpoint, save_checkpoint
from matsim.datasets.graphs import file_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="DiffSpectra checkpoint (best.pt)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--benchmark", default="benchmarks/spectra/diffspectra_prior.md",
                        help="the result file that measured this checkpoint")
    parser.add_argument("--caveat", default=None, help="known limits every user of the model must hear about")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.model != "diffspectra":
        parser.error(f"{args.checkpoint} holds a {checkpoint.model!r} model, not diffspectra")
    checkpoint.metadata.update({"parent": {"path": str(args.checkpoint), "sha256": file_digest(args.checkpoint)},
                                "benchmark": args.benchmark, "shipped": datetime.date.today().isoformat()})
    if args.caveat:
        checkpoint.metadata["caveat"] = args.caveat
    path = save_checkpoint(checkpoint, args.output)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, sha256 {file_digest(path)[:16]}…")


if __name__ == "__main__":
    main()
