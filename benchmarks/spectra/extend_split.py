"""Extend a spectra split to a file that appends molecules after the split's rows (e.g. newly computed shards
merged after the original file): the new rows join ``train``; ``valid`` and ``test`` stay as they are, and a new
molecule of a compound already in ``valid`` or ``test`` (same :func:`matsim.datasets.spectra.molecule_key`) is
left out of every set, so the held-out compounds stay unseen.

    matsim spectra merge benchmarks/spectra/data/qm9_gfn2_6018.h5 benchmarks/spectra/data/qm9_gfn2_shards_0012-0017.h5 \\
        --sticks-only -o runs/spectra/qm9_gfn2_merged.h5
    python benchmarks/spectra/extend_split.py benchmarks/spectra/data/qm9_gfn2_6018_split.json \\
        runs/spectra/qm9_gfn2_merged.h5 -o runs/spectra/qm9_gfn2_merged_split.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matsim.datasets.spectra import SpectraSplit, load_spectra_split, molecule_key, read_spectra, save_spectra_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path, help="split of the first rows (matsim spectra split)")
    parser.add_argument("spectra", type=Path, help="the longer SPECTRA.h5 (the split's rows first)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    old = load_spectra_split(args.split)
    smiles = read_spectra(args.spectra).smiles
    first = len(old.train) + len(old.valid) + len(old.test)
    held_out = {molecule_key(smiles[i]) for i in old.valid + old.test}
    new = [i for i in range(first, len(smiles)) if molecule_key(smiles[i]) not in held_out]
    split = SpectraSplit(train=old.train + new, valid=old.valid, test=old.test,
                         kind=f"{old.kind} (rows < {first}), later rows in train", seed=old.seed)
    save_spectra_split(split, args.output)
    print(f"{args.output}: train {len(split.train)} (+{len(new)}), valid {len(split.valid)}, test {len(split.test)}; "
          f"{len(smiles) - first - len(new)} new rows of held-out compounds left out")


if __name__ == "__main__":
    main()
