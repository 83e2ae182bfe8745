"""Fit the composition-fingerprint standardisation that coverage uses (``matsim/metrics/data/magpie_scaler_mp20.json``).

CDVAE standardises Magpie composition fingerprints with the means and stds of MP-20 training crystals, the same
numbers for perov_5, carbon_24 and MP-20. This script makes matsim's copy of those statistics from the MP-20 rows
we have (CDVAE's train and validation splits, cut down by a fork: 847 + 123 crystals):

    python benchmarks/crystals/fit_composition_scaler.py \\
        ../shared/data/mp_20_subset/opryan90_train_subset.csv ../shared/data/mp_20_subset/opryan90_val_subset.csv

Features without data in every row keep mean 0 / std 1 (NaN maps to 0 after scaling, as in CDVAE).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance  # noqa: E402


def main() -> None:
    from matsim.metrics.crystal import (
        COMPOSITION_SCALER_FILE,
        CompositionScaler,
        composition_fingerprint,
        read_csv_structures,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", type=Path, help="crystal CSVs with a 'cif' column")
    parser.add_argument("--output", type=Path, default=COMPOSITION_SCALER_FILE)
    args = parser.parse_args()
    rows = []
    for path in args.csv:
        rows += [composition_fingerprint(s.composition) for s in read_csv_structures(path) if s is not None]
    scaler = CompositionScaler.fit(np.asarray(rows, dtype=float))
    sources = [{"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for path in args.csv]
    record = provenance(packages=["matminer", "pymatgen"]) | {
        "command": command_line("benchmarks/crystals/fit_composition_scaler.py"),
        "sources": sources,
        "n_crystals": len(rows),
        "features": "matminer ElementProperty.from_preset('magpie'), 132 features",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    scaler.save(args.output, record)
    print(f"{len(rows)} crystals -> {args.output}")


if __name__ == "__main__":
    main()
