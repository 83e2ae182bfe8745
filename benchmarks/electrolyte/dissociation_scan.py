"""Anion bond-dissociation frames and scans (issue 6): DFT data that tell a potential what breaking PF6⁻, FSI⁻ or
TFSI⁻ costs, and the benchmark that checks it.

Why: electrolyte-small v1 has almost no barrier to PF6⁻ → PF5 + F⁻ next to Li⁺ (B3LYP rises by +1.5 eV when the
P–F bond is 0.7 Å longer, the model stays within +0.3 eV and then falls), and PF6⁻ decomposed within 0.5–2.5 ps
of LP30 MD. Its training clusters hold every anion near equilibrium, so nothing in the data said how steep the wall
is. These frames do.

    python benchmarks/electrolyte/dissociation_scan.py build train --output runs/electrolyte/scans/train.extxyz
    python benchmarks/electrolyte/dissociation_scan.py build valid --output runs/electrolyte/scans/valid.extxyz
    python benchmarks/electrolyte/dissociation_scan.py build test --output runs/electrolyte/scans/test.extxyz
    matsim data label runs/electrolyte/scans/test.extxyz --method dft --max-scf-cycles 300 \
        -o runs/electrolyte/scans/test-dft.extxyz                       # likewise train and valid
    python benchmarks/electrolyte/dissociation_scan.py report runs/electrolyte/scans/test-dft.extxyz \
        --model electrolyte-small --output benchmarks/electrolyte/results/dissociation_scan_v1

``build``: the clusters of ``data/dft-{split}.extxyz.xz`` that hold an anion (anion–solvent pairs and contact ion
pairs). One bond of the anion is stretched: P–F of PF6⁻; S–F and S–N of FSI⁻; S–N, S–C and C–F of TFSI⁻. The part
of the anion on the leaving side of the bond (an F, a CF3, an SO2X group) moves rigidly outwards along the bond. In
a contact ion pair the leaving part is the one nearest the Li⁺ (the decomposition seen in MD), otherwise it is
drawn at random. ``rigid`` frames stop there; ``relaxed`` frames then let every other atom relax with GFN2-xTB
(tblite) at the fixed bond length (at most ``RELAX_STEPS`` FIRE steps): the low path MD would take, e.g. PF5
turning towards a trigonal bipyramid. The labels are closed-shell B3LYP: for the bonds that break homolytically
(S–N, S–C) that overestimates the dissociation energy, so those are stretched less (``MAX_STRETCH_A``).

- ``train`` / ``valid``: one frame per cluster, the bond drawn from the anion's list in turn, the stretch uniform in
  [0.15, MAX_STRETCH_A] Å, rigid and relaxed alternating (seed 0).
- ``test``: whole scans (``STRETCH_A`` up to the bond's maximum; 0 is the cluster itself, or relaxed at its own bond
  length) of a few clusters per anion and bond, all relaxed, plus rigid P–F scans of the two smallest PF6⁻ contact
  ion pairs.

``report``: the energy of each scan frame relative to its unstretched frame (eV), DFT (B3LYP/def2-SVP, no
dispersion) against the model with its dispersion term off, per scan, and a summary per bond and mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.constraints import FixBondLengths
from ase.data import covalent_radii
from ase.io import read, write
from ase.optimize import FIRE
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from matsim.md.analysis.topology import bond_topology

DATA = Path(__file__).parent / "data"
#: anion (Hill formula) -> bonds (core, leaving) that may be stretched; the leaving side moves.
ANION_BONDS: dict[str, tuple[tuple[str, str], ...]] = {
    "F6P": (("P", "F"),),
    "F2NO4S2": (("S", "F"), ("N", "S")),
    "C2F6NO4S2": (("N", "S"), ("S", "C"), ("C", "F")),
}
#: the largest stretch (Å) per bond: fluoride-like leaving groups go further than the homolytic S–N and S–C.
MAX_STRETCH_A = {("P", "F"): 1.5, ("S", "F"): 1.5, ("C", "F"): 1.5, ("N", "S"): 1.0, ("S", "C"): 1.0}
MIN_STRETCH_A = 0.15
#: test scan points (Å) added to the cluster's own bond length.
STRETCH_A = (0.0, 0.2, 0.4, 0.7, 1.0, 1.5)
RELAX_STEPS = 40
RELAX_FMAX = 0.1  # eV/Å
#: test scans: (anion, bond, cluster kind, how many clusters).
TEST_SCANS = (
    ("F6P", ("P", "F"), "contact_ion_pair", 2), ("F6P", ("P", "F"), "anion_solvent", 1),
    ("F2NO4S2", ("S", "F"), "contact_ion_pair", 1), ("F2NO4S2", ("S", "F"), "anion_solvent", 1),
    ("F2NO4S2", ("N", "S"), "contact_ion_pair", 1),
    ("C2F6NO4S2", ("N", "S"), "anion_solvent", 1), ("C2F6NO4S2", ("S", "C"), "anion_solvent", 1),
    ("C2F6NO4S2", ("C", "F"), "anion_solvent", 1),
)


def anion_atoms(cluster: Atoms) -> tuple[str, np.ndarray]:
    """The Hill formula and atom indices of the cluster's anion (the molecule with negative formal charge)."""
    mol_id, formal = cluster.arrays["mol_id"], cluster.arrays["formal_charge"]
    for molecule in np.unique(mol_id):
        members = np.flatnonzero(mol_id == molecule)
        if formal[members].sum() < 0:
            return Atoms(cluster.numbers[members]).get_chemical_formula(mode="hill"), members
    raise ValueError(f"{cluster.info.get('source')}: no anion")


def anion_bonds(cluster: Atoms, members: np.ndarray) -> list[tuple[int, int]]:
    """Covalent bonds (i, j) of the anion ``members`` (:func:`matsim.md.analysis.topology.bond_topology`)."""
    bonds = bond_topology(cluster)
    inside = np.isin(bonds.i, members)
    return list(zip(bonds.i[inside].tolist(), bonds.j[inside].tolist()))


def leaving_side(cluster: Atoms, members: np.ndarray, core: int, leaving: int) -> np.ndarray:
    """Atoms of the anion (``members``) still connected to ``leaving`` once the core–leaving bond is cut."""
    local = {atom: k for k, atom in enumerate(members)}
    kept = [(local[i], local[j]) for i, j in anion_bonds(cluster, members) if {i, j} != {core, leaving}]
    rows, cols = zip(*kept)
    graph = coo_matrix((np.ones(len(kept)), (rows, cols)), shape=(len(members), len(members)))
    _, component = connected_components(graph, directed=False)
    return members[component == component[local[leaving]]]


def candidate_bonds(cluster: Atoms, members: np.ndarray, bond: tuple[str, str]) -> list[tuple[int, int]]:
    """(core, leaving) atom pairs of the anion bonded as ``bond`` (element symbols, core first)."""
    symbols = cluster.get_chemical_symbols()
    pairs = []
    for i, j in anion_bonds(cluster, members):
        if (symbols[i], symbols[j]) == bond:
            pairs.append((i, j))
        elif (symbols[j], symbols[i]) == bond:
            pairs.append((j, i))
    return sorted(pairs)


def choose_bond(cluster: Atoms, pairs: list[tuple[int, int]], rng: np.random.Generator) -> tuple[int, int]:
    """The pair whose leaving atom is nearest a Li⁺ when there is one, else a random pair."""
    lithium = np.flatnonzero(cluster.numbers == 3)
    if len(lithium):
        distances = [np.linalg.norm(cluster.positions[lithium] - cluster.positions[leaving], axis=1).min()
                     for _, leaving in pairs]
        return pairs[int(np.argmin(distances))]
    return pairs[int(rng.integers(len(pairs)))]


def stretched(cluster: Atoms, members: np.ndarray, core: int, leaving: int, stretch: float, mode: str,
              bond_name: str) -> Atoms:
    """``cluster`` with the leaving side of the core–leaving bond moved out by ``stretch`` Å (then relaxed with
    GFN2-xTB at that bond length when ``mode == "relaxed"``); scan metadata in ``info``."""
    frame = Atoms(cluster.numbers, cluster.positions.copy())
    frame.arrays["mol_id"] = cluster.arrays["mol_id"].copy()
    frame.arrays["formal_charge"] = cluster.arrays["formal_charge"].copy()
    frame.info.update(charge=int(cluster.info["charge"]), source=cluster.info["source"],
                      cluster_kind=cluster.info["cluster_kind"], bond=bond_name, mode=mode, stretch_A=float(stretch))
    unit = frame.positions[leaving] - frame.positions[core]
    unit /= np.linalg.norm(unit)
    frame.positions[leaving_side(cluster, members, core, leaving)] += stretch * unit
    if mode == "relaxed":
        from matsim.reference.xtb import XTBCalculator

        frame.set_constraint(FixBondLengths([[core, leaving]]))
        frame.calc = XTBCalculator("gfn2")
        FIRE(frame, logfile=None).run(fmax=RELAX_FMAX, steps=RELAX_STEPS)
        frame.calc = None
        frame.set_constraint()
    frame.info["bond_A"] = float(frame.get_distance(core, leaving))
    lithium = np.flatnonzero(frame.numbers == 3)
    if len(lithium):
        frame.info["leaving_li_A"] = float(np.linalg.norm(frame.positions[lithium] - frame.positions[leaving],
                                                          axis=1).min())
    return frame


def too_close(frame: Atoms) -> bool:
    """True when two atoms sit closer than 0.6 × the sum of their covalent radii."""
    distance = frame.get_all_distances()
    radii = covalent_radii[frame.numbers]
    np.fill_diagonal(distance, np.inf)
    return bool((distance < 0.6 * (radii[:, None] + radii[None])).any())


def anion_clusters(split: str) -> list[Atoms]:
    """The clusters of ``dft-{split}`` that hold an anion, sorted by size then source (deterministic)."""
    clusters = [a for a in read(DATA / f"dft-{split}.extxyz.xz", ":") if (a.arrays["formal_charge"] < 0).any()]
    return sorted(clusters, key=lambda a: (len(a), a.info["source"]))


def training_frames(split: str, seed: int = 0) -> list[Atoms]:
    """One stretched frame per anion cluster of ``split`` (bond in turn, random stretch, rigid/relaxed alternating)."""
    rng = np.random.default_rng(seed)
    frames, turn = [], defaultdict(int)
    for n, cluster in enumerate(anion_clusters(split)):
        formula, members = anion_atoms(cluster)
        bonds = ANION_BONDS[formula]
        bond = bonds[turn[formula] % len(bonds)]
        turn[formula] += 1
        core, leaving = choose_bond(cluster, candidate_bonds(cluster, members, bond), rng)
        for _ in range(5):
            stretch = rng.uniform(MIN_STRETCH_A, MAX_STRETCH_A[bond])
            frame = stretched(cluster, members, core, leaving, stretch, ("rigid", "relaxed")[n % 2], "-".join(bond))
            if not too_close(frame):
                frames.append(frame)
                break
    return frames


def test_scans() -> list[Atoms]:
    """Whole scans of a few held-out clusters per anion and bond (see the module docstring)."""
    rng = np.random.default_rng(0)
    clusters = anion_clusters("test")
    frames = []
    for formula, bond, kind, count in TEST_SCANS:
        chosen = [c for c in clusters if c.info["cluster_kind"] == kind and anion_atoms(c)[0] == formula][:count]
        modes = ("rigid", "relaxed") if formula == "F6P" and kind == "contact_ion_pair" else ("relaxed",)
        for cluster in chosen:
            _, members = anion_atoms(cluster)
            core, leaving = choose_bond(cluster, candidate_bonds(cluster, members, bond), rng)
            for mode in modes:
                frames += [stretched(cluster, members, core, leaving, s, mode, "-".join(bond))
                           for s in STRETCH_A if s <= MAX_STRETCH_A[bond]]
    return frames


def build(split: str, output: Path) -> None:
    frames = test_scans() if split == "test" else training_frames(split)
    output.parent.mkdir(parents=True, exist_ok=True)
    write(output, frames, format="extxyz")
    counts = defaultdict(int)
    for frame in frames:
        counts[(frame.info["bond"], frame.info["mode"])] += 1
    print(f"{output}: {len(frames)} frames; " + ", ".join(f"{b} {m}: {n}" for (b, m), n in sorted(counts.items())))


def scan_rows(labelled: Path, model: str) -> list[dict]:
    """ΔE (eV) of every scan frame against its stretch-0 frame, DFT and model (dispersion off)."""
    import torch

    from matsim.core.graph import AtomGraph
    from matsim.models import load_model
    from matsim.models.forcefield import ForceField
    from matsim.train.distill import without_dispersion

    forcefield = ForceField(without_dispersion(load_model(model, device="cpu", dtype=torch.float64).eval()))
    scans: dict[tuple, list[Atoms]] = defaultdict(list)
    for frame in read(labelled, ":"):
        scans[(frame.info["source"], frame.info["bond"], frame.info["mode"])].append(frame)
    rows = []
    for (source, bond, mode), frames in scans.items():
        frames.sort(key=lambda f: f.info["stretch_A"])
        if frames[0].info["stretch_A"] != 0.0:
            continue  # the unstretched frame did not converge: no reference
        graphs = [AtomGraph.build([f], cutoff=forcefield.potential.cutoff, dtype=torch.float64) for f in frames]
        model_energy = [float(forcefield(g, compute_forces=False)["energy"][0]) for g in graphs]
        dft_energy = [f.get_potential_energy() for f in frames]
        for frame, e_dft, e_model in zip(frames, dft_energy, model_energy):
            rows.append({"source": source, "bond": bond, "mode": mode, "atoms": len(frame),
                         "stretch_A": frame.info["stretch_A"], "bond_A": frame.info["bond_A"],
                         "leaving_li_A": frame.info.get("leaving_li_A"), "dft_eV": e_dft - dft_energy[0],
                         "model_eV": e_model - model_energy[0]})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per bond and mode: scans, mean |model − DFT| over the stretched points, and the mean ΔE at the largest
    stretch (DFT and model)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["stretch_A"] > 0:
            groups[(row["bond"], row["mode"])].append(row)
    table = []
    for (bond, mode), members in sorted(groups.items()):
        largest = max(r["stretch_A"] for r in members)
        last = [r for r in members if r["stretch_A"] == largest]
        table.append({"bond": bond, "mode": mode, "scans": len(last), "points": len(members),
                      "mae_eV": float(np.mean([abs(r["model_eV"] - r["dft_eV"]) for r in members])),
                      "largest_stretch_A": largest, "dft_last_eV": float(np.mean([r["dft_eV"] for r in last])),
                      "model_last_eV": float(np.mean([r["model_eV"] for r in last]))})
    return table


def report(labelled: Path, model: str, output: Path) -> None:
    rows = scan_rows(labelled, model)
    table = summary(rows)
    command = (f"python benchmarks/electrolyte/dissociation_scan.py report {labelled} --model {model} "
               f"--output {output}")
    date = datetime.date.today().isoformat()
    output.with_suffix(".json").write_text(json.dumps(
        {"date": date, "model": model, "command": command, "summary": table, "rows": rows}, indent=1))
    lines = ["# Anion bonds stretched: energy relative to the intact cluster, DFT vs model", "",
             f"Date {date}; CPU; B3LYP/def2-SVP (no dispersion) vs {model} with its dispersion term off. "
             f"Command: `{command}`", "",
             "| bond | mode | scans | points | mean \\|model − DFT\\| (eV) | largest stretch (Å) | ΔE DFT there (eV) "
             "| ΔE model there (eV) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['bond']} | {t['mode']} | {t['scans']} | {t['points']} | {t['mae_eV']:.3f} | "
              f"{t['largest_stretch_A']:.1f} | {t['dft_last_eV']:+.2f} | {t['model_last_eV']:+.2f} |" for t in table]
    lines += ["", "| cluster | bond | mode | atoms | bond length (Å) | leaving–Li (Å) | ΔE DFT (eV) | ΔE model (eV) | "
              "model − DFT (eV) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        li = f"{r['leaving_li_A']:.2f}" if r["leaving_li_A"] is not None else "–"
        lines.append(f"| {r['source']} | {r['bond']} | {r['mode']} | {r['atoms']} | {r['bond_A']:.2f} | {li} | "
                     f"{r['dft_eV']:+.3f} | {r['model_eV']:+.3f} | {r['model_eV'] - r['dft_eV']:+.3f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("split", choices=("train", "valid", "test"))
    build_parser.add_argument("--output", type=Path, required=True)
    report_parser = sub.add_parser("report")
    report_parser.add_argument("labelled", type=Path)
    report_parser.add_argument("--model", default="electrolyte-small")
    report_parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "build":
        build(args.split, args.output)
    else:
        report(args.labelled, args.model, args.output)


if __name__ == "__main__":
    main()
