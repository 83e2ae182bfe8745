"""Periodic liquid frames for GFN2-xTB pre-training: packed boxes of the electrolyte and the pure carbonates, each at
several densities, to be labelled with ``matsim data label --method gfn2`` (energies, forces, charges and stress).

Why: the DFT data of the electrolyte model are gas-phase clusters, and a model trained on them alone collapses in
NPT (benchmarks/electrolyte/results/align_dmc_v0.md). Bulk frames with stress, compressed and expanded around the
estimated density, teach the intermolecular repulsion and the pressure; GFN2-xTB labels serve for pre-training only.

Each box is built by :func:`matsim.md.builder.build_box` (rdkit conformers, packmol) at its estimated density with a
different seed; every packing is then scaled *rigidly per molecule* (molecule centres and cell by a linear factor s,
intramolecular geometry kept), for s in ``SCALES`` (density x s^-3: about 0.78-1.30 of the estimate), and rattled by
``--rattle`` Å (Gaussian, per Cartesian component) so the intramolecular forces are not all at the conformer minimum.
Frames whose closest intermolecular pair falls under 1.2 Å after scaling are dropped; the rest are written in a
seeded random order. (The first labelled set was scaled with molecules made whole by each atom's nearest image of the
molecule's first atom, which tears DEC and EMC apart in a 13 Å cell: ``prepare.py split-liquid`` drops those frames;
:func:`matsim.datasets.displacements.scale_box` now walks the bonds.)

    python benchmarks/electrolyte/liquid_frames.py --output runs/electrolyte/liquid_frames.extxyz
    matsim data label runs/electrolyte/liquid_frames.extxyz --method gfn2 -o runs/electrolyte/liquid_gfn2.extxyz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from matsim.datasets.displacements import scale_box
from matsim.md.builder import SystemConfig, build_box

#: name -> (system of build_box without seed, packings). ~200-300 atoms: a periodic GFN2 point takes ~10-40 core-s.
SYSTEMS: dict[str, tuple[dict, int]] = {
    "LiPF6-EC-DMC": (dict(solvents=[{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}], ratio_basis="mass",
                          salts=[{"name": "LiPF6", "concentration": 1.0, "unit": "mol/L"}], n_atoms=300), 16),
    "LiPF6-EC-DMC-2M": (dict(solvents=[{"name": "EC", "ratio": 1.0}, {"name": "DMC", "ratio": 1.0}],
                             ratio_basis="mass", salts=[{"name": "LiPF6", "concentration": 2.0, "unit": "mol/L"}],
                             n_atoms=200), 8),
    "EC": (dict(solvents=[{"name": "EC"}], n_atoms=200), 6),
    "PC": (dict(solvents=[{"name": "PC"}], n_atoms=200), 6),
    "DMC": (dict(solvents=[{"name": "DMC"}], n_atoms=200), 6),
    "EMC": (dict(solvents=[{"name": "EMC"}], n_atoms=200), 6),
    "DEC": (dict(solvents=[{"name": "DEC"}], n_atoms=200), 6),
}
#: Linear scale factors of molecule centres and cell.
SCALES = (0.92, 0.96, 1.0, 1.04, 1.08)
MIN_INTERMOLECULAR_A = 1.2


def closest_intermolecular(atoms: Atoms) -> float:
    """Shortest distance (Å) between atoms of different molecules (periodic images included)."""
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=3.0, full_list=False).compute(atoms.positions, atoms.cell.array, True, "ijd")
    mol_id = atoms.arrays["mol_id"]
    other = mol_id[i] != mol_id[j]
    return float(d[other].min()) if other.any() else np.inf


def frames(rattle: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for name, (system, packings) in SYSTEMS.items():
        for packing in range(packings):
            box = build_box(SystemConfig.model_validate({**system, "seed": packing}))
            for scale in SCALES:
                frame = scale_box(box, scale)
                frame.wrap()
                frame.positions += rng.normal(scale=rattle, size=frame.positions.shape)
                if closest_intermolecular(frame) < MIN_INTERMOLECULAR_A:
                    continue
                frame.info = {"system": name, "packing": packing, "scale": scale, "charge": box.info["charge"],
                              "density_g_cm3": float(frame.get_masses().sum() / frame.get_volume() * 1.66054)}
                out.append(frame)
        print(f"{name}: {sum(f.info['system'] == name for f in out)} frames of {len(box)} atoms", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/electrolyte/liquid_frames.extxyz"))
    parser.add_argument("--rattle", type=float, default=0.03, help="Gaussian displacement per component, Å")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = frames(args.rattle, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(out))  # a partly labelled file still covers every system
    out = [out[i] for i in order]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.output, out, format="extxyz")
    print(f"wrote {len(out)} frames to {args.output}")


if __name__ == "__main__":
    main()
