"""Data preparation for the electrolyte force field: the DFT queue and the train / valid / test files.

    python benchmarks/electrolyte/prepare.py queue GFN2.extxyz QUEUE.extxyz [--max-atoms 30] [--seed 0]
    python benchmarks/electrolyte/prepare.py split LABELLED.extxyz OUT_PREFIX [--valid 1] [--test 2]
    python benchmarks/electrolyte/prepare.py scan TRAIN.extxyz SCANS.extxyz [--n 600] [--seed 0]
    python benchmarks/electrolyte/prepare.py eos TRAJ.extxyz [TRAJ ...] --output EOS.extxyz [--every 4]
    python benchmarks/electrolyte/prepare.py split-liquid LIQUID.extxyz OUT_PREFIX
    python benchmarks/electrolyte/prepare.py by-split LABELLED.extxyz OUT_PREFIX

``queue``: the clusters DFT should label, in the order to label them. DFT is the scarce resource (1-5 core-minutes
per cluster), so the order is round-robin over (liquid, cluster kind) groups, shuffled by seed within each group:
whatever prefix gets labelled covers every liquid and kind evenly. Only clusters that GFN2-xTB labelled (its SCF
converged) and that have at most ``--max-atoms`` atoms are queued.

``split``: train / valid / test files by *time*: the clusters of the last ``--test`` snapshots (of every liquid) go to
the test file, those of the ``--valid`` snapshots before them to the validation file, the rest to training. Clusters
of one snapshot share molecules, so a random split by cluster would leak near-copies into the test set.
Writes OUT_PREFIX-train.extxyz, OUT_PREFIX-valid.extxyz, OUT_PREFIX-test.extxyz and prints the counts.

``by-split``: OUT_PREFIX-<value>.extxyz for every value of the frames' ``info["split"]`` (the committed dissociation
and active-learning files carry their split that way).

``scan``: rigid-body displacement scans (:mod:`matsim.datasets.displacements`) of ``--n`` clusters drawn by seed from
a training file, to be labelled like the clusters (they teach the intermolecular wall and tail that thermal
snapshots leave open). Scans of training clusters stay in training.

``eos``: periodic liquid frames for the equation of state: every ``--every``-th frame of the given trajectories
(e.g. the seed MD's ``md/<liquid>/trajectory.extxyz``) scaled with rigid molecules (:func:`scale_box`) by each of
``--factors`` (box lengths), for periodic GFN2-xTB labels with stress (``matsim data label --method gfn2``).

``split-liquid``: train / valid files of the periodic liquid frames (``liquid_frames.py``, labelled): the last
packing of every system goes to validation (its five densities together), the rest to training. Frames with a
molecule that is not one bonded piece (:func:`matsim.datasets.displacements.molecules_intact`) are left out and
counted. The dipole is dropped: a periodic cell has none (tblite reports the cell's, which depends on where
molecules were wrapped).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


def frame_number(snapshot: str) -> int:
    """The MD frame number of a snapshot id ``"<liquid>/frame<k>"``."""
    match = re.search(r"frame(\d+)$", snapshot)
    if match is None:
        raise ValueError(f"snapshot id {snapshot!r} does not end in frame<k>")
    return int(match.group(1))


def dft_queue(clusters: list[Atoms], max_atoms: int, seed: int) -> list[Atoms]:
    """Clusters of at most ``max_atoms`` atoms, round-robin over (liquid, kind) groups, seeded order in each."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[Atoms]] = defaultdict(list)
    for cluster in clusters:
        if len(cluster) <= max_atoms:
            groups[(cluster.info["liquid"], cluster.info["cluster_kind"])].append(cluster)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items())]
    order = []
    for rank in range(max((len(q) for q in queues), default=0)):
        order.extend(q[rank].copy() for q in queues if rank < len(q))  # copies drop the GFN2 results
    return order


def split_by_time(clusters: list[Atoms], n_valid: int, n_test: int) -> dict[str, list[Atoms]]:
    """The last ``n_test`` snapshot numbers → test, the ``n_valid`` before them → valid, the rest → train.

    Every liquid's seed MD numbers its snapshots the same way (0 .. count-1), so the split is the same in time for
    every liquid, also when only a few clusters per liquid are labelled (the DFT set).
    """
    numbers = sorted({frame_number(c.info["snapshot"]) for c in clusters}, reverse=True)
    role = {n: "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
            for rank, n in enumerate(numbers)}
    out: dict[str, list[Atoms]] = {"train": [], "valid": [], "test": []}
    for cluster in clusters:
        out[role[frame_number(cluster.info["snapshot"])]].append(cluster)
    return out


def split_liquid(frames: list[Atoms]) -> dict[str, list[Atoms]]:
    """{"train", "valid", "broken"}: frames of each ``info["system"]``'s last ``info["packing"]`` are validation;
    frames with a torn molecule are set apart as broken."""
    from matsim.datasets.displacements import molecules_intact

    last = defaultdict(int)
    for atoms in frames:
        last[atoms.info["system"]] = max(last[atoms.info["system"]], int(atoms.info["packing"]))
    parts: dict[str, list[Atoms]] = {"train": [], "valid": [], "broken": []}
    for original in frames:
        if not molecules_intact(original):
            parts["broken"].append(original)
            continue
        atoms = original.copy()  # copies drop the calculator: its results go back on, less the dipole
        atoms.info.pop("dipole", None)
        atoms.calc = SinglePointCalculator(atoms, **{key: value for key, value in original.calc.results.items()
                                                     if key != "dipole"})
        is_valid = int(atoms.info["packing"]) == last[atoms.info["system"]]
        parts["valid" if is_valid else "train"].append(atoms)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    queue = commands.add_parser("queue", help="order the clusters for DFT labelling")
    queue.add_argument("labelled", type=Path, help="GFN2-labelled clusters (extxyz)")
    queue.add_argument("output", type=Path)
    queue.add_argument("--max-atoms", type=int, default=30)
    queue.add_argument("--seed", type=int, default=0)
    split = commands.add_parser("split", help="train / valid / test files by snapshot time")
    split.add_argument("labelled", type=Path)
    split.add_argument("prefix", type=str)
    split.add_argument("--valid", type=int, default=1, help="snapshots per liquid for validation")
    split.add_argument("--test", type=int, default=2, help="last snapshots per liquid for the test set")
    scan = commands.add_parser("scan", help="rigid-body displacement scans of training clusters")
    scan.add_argument("labelled", type=Path)
    scan.add_argument("output", type=Path)
    scan.add_argument("--n", type=int, default=600, help="clusters to scan")
    scan.add_argument("--seed", type=int, default=0)
    eos = commands.add_parser("eos", help="rigid-molecule volume scans of periodic liquid frames")
    eos.add_argument("trajectories", type=Path, nargs="+")
    eos.add_argument("--output", type=Path, required=True)
    eos.add_argument("--every", type=int, default=4)
    eos.add_argument("--factors", type=float, nargs="+", default=[0.96, 0.98, 1.0, 1.02, 1.04])
    liquid = commands.add_parser("split-liquid", help="train/valid split of labelled liquid frames by packing")
    liquid.add_argument("labelled", type=Path)
    liquid.add_argument("prefix")
    by_split = commands.add_parser("by-split", help="one file per value of info['split']")
    by_split.add_argument("labelled", type=Path)
    by_split.add_argument("prefix")
    args = parser.parse_args()

    if args.command == "by-split":
        parts: dict[str, list[Atoms]] = {}
        for frame in ase.io.read(args.labelled, index=":"):
            parts.setdefault(frame.info["split"], []).append(frame)
        for name, part in parts.items():
            ase.io.write(f"{args.prefix}-{name}.extxyz", part, format="extxyz")
            print(f"{args.prefix}-{name}.extxyz: {len(part)} frames")
        return
    if args.command == "split-liquid":
        parts = split_liquid(ase.io.read(args.labelled, index=":"))
        for name in ("train", "valid"):
            ase.io.write(f"{args.prefix}-{name}.extxyz", parts[name], format="extxyz")
            print(f"{args.prefix}-{name}.extxyz: {len(parts[name])} frames")
        broken = sorted({(a.info["system"], a.info["scale"]) for a in parts["broken"]})
        print(f"left out {len(parts['broken'])} frames with a torn molecule: {broken}")
        return
    if args.command == "eos":
        from matsim.datasets.displacements import scale_box

        frames = []
        for path in args.trajectories:
            for frame in ase.io.read(path, index=f"::{args.every}"):
                for factor in args.factors:
                    scaled = scale_box(frame, factor)
                    scaled.info.update(charge=int(round(frame.arrays["formal_charge"].sum())), eos_factor=factor,
                                       liquid=path.parent.name)
                    frames.append(scaled)
        ase.io.write(args.output, frames, format="extxyz")
        print(f"{args.output}: {len(frames)} frames")
        return
    clusters = ase.io.read(args.labelled, index=":")
    if args.command == "queue":
        order = dft_queue(clusters, args.max_atoms, args.seed)
        ase.io.write(args.output, order, format="extxyz")
        print(f"{args.output}: {len(order)} of {len(clusters)} clusters (<= {args.max_atoms} atoms)")
    elif args.command == "scan":
        from matsim.datasets.displacements import displacement_scans

        picked = np.random.default_rng(args.seed).permutation(len(clusters))[: args.n]
        frames = displacement_scans([clusters[i].copy() for i in sorted(picked)], seed=args.seed)
        ase.io.write(args.output, frames, format="extxyz")
        print(f"{args.output}: {len(frames)} displaced frames from {len(picked)} clusters")
    else:
        for name, part in split_by_time(clusters, args.valid, args.test).items():
            path = f"{args.prefix}-{name}.extxyz"
            ase.io.write(path, part, format="extxyz")
            print(f"{path}: {len(part)} clusters")


if __name__ == "__main__":
    main()
