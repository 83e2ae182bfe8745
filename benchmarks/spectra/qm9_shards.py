"""Split QM9 into shuffled ``.smi`` shards for ``matsim spectra compute`` (one process per shard on many cores).

    python benchmarks/spectra/qm9_shards.py ../shared/data/qm9/qm9_smiles.csv runs/spectra/shards \
        --size 1000 --first 0 --count 4

The rows of ``qm9_smiles.csv`` are shuffled once with a fixed seed (``numpy.random.default_rng(0).permutation``),
so shard k always holds the same molecules: shards computed in different sessions never overlap, and any prefix of
the shards is a uniform random sample of QM9. Each line is ``SMILES qm9-ROW`` (ROW: 0-based data row of the CSV), so
every spectrum can be traced back to its QM9 entry. SMILES that rdkit cannot parse and sanitise (QM9's few charged
artefacts of the xyz → mol conversion, e.g. ``[NH-]C1ONN=C[CH+]1C=O``) are left out of the shards and counted.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from matsim.core.errors import InputFileError
from matsim.datasets.spectra import parse_smiles


def _parses(smiles: str) -> bool:
    try:
        parse_smiles(smiles)
    except InputFileError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="qm9_smiles.csv (a 'smiles' column)")
    parser.add_argument("output", type=Path, help="folder for shard_KKKK.smi")
    parser.add_argument("--size", type=int, default=1000, help="molecules per shard")
    parser.add_argument("--first", type=int, default=0, help="index of the first shard to write")
    parser.add_argument("--count", type=int, default=1, help="shards to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.csv, newline="") as handle:
        smiles = [row["smiles"] for row in csv.DictReader(handle)]
    order = np.random.default_rng(args.seed).permutation(len(smiles))
    args.output.mkdir(parents=True, exist_ok=True)
    for shard in range(args.first, args.first + args.count):
        rows = order[shard * args.size:(shard + 1) * args.size]
        kept = [r for r in rows if _parses(smiles[r])]
        path = args.output / f"shard_{shard:04d}.smi"
        path.write_text("".join(f"{smiles[r]} qm9-{r}\n" for r in kept))
        print(f"{path}: {len(kept)} molecules ({len(rows) - len(kept)} that rdkit cannot parse left out)")


if __name__ == "__main__":
    main()
