"""Interaction energies of solvent dimers: B3LYP/def2-SVP with and without the counterpoise correction, against the
shipped model (issue 6: why do the liquids come out too dense?).

    python benchmarks/electrolyte/bsse.py --per-species 2 --output benchmarks/electrolyte/results/bsse

For each chosen solvent dimer of the held-out DFT test clusters (``dft-test.extxyz.xz``, split by ``mol_id``):

* ΔE_raw = E(AB) − E(A) − E(B), each monomer in its own basis (what the training labels see);
* ΔE_CP = E(AB) − E(A in the AB basis) − E(B in the AB basis), the Boys–Bernardi counterpoise correction: the
  monomers get the partner's basis functions on ghost atoms, so the basis-set superposition error (BSSE = ΔE_raw −
  ΔE_CP, negative: too much binding) cancels;
* the model's ΔE without dispersion (what it was fitted to reproduce) and the D3(BJ) part it adds at inference.

DFT as the labels were made: PySCF RKS, B3LYP, def2-SVP, density fitting, conv_tol 1e-9; energies in kcal/mol.
Writes OUTPUT.json and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read
from ase.units import Hartree, kcal, mol

KCAL_PER_EV = 1.0 / (kcal / mol)
DATA = Path(__file__).parent / "data" / "dft-test.extxyz.xz"


def scf_energy(atoms: Atoms, ghosts: Atoms | None = None) -> float:
    """B3LYP/def2-SVP energy (eV) of ``atoms``, with the basis functions of ``ghosts`` on ghost atoms."""
    from pyscf import dft, gto

    spec = [(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions.tolist())]
    if ghosts is not None:
        spec += [(f"ghost-{s}", p) for s, p in zip(ghosts.get_chemical_symbols(), ghosts.positions.tolist())]
    molecule = gto.M(atom=spec, basis="def2-SVP", charge=0, spin=0, unit="Angstrom", verbose=0)
    mf = dft.RKS(molecule, xc="b3lyp").density_fit()
    mf.conv_tol = 1e-9
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for {atoms.get_chemical_formula()}")
    return float(mf.e_tot) * Hartree


def model_energies(forcefield, atoms: Atoms) -> tuple[float, float]:
    """(energy without dispersion, D3 energy), eV, of ``atoms`` with a float64 ``ForceField``."""
    import torch

    from matsim.core.graph import AtomGraph

    graph = AtomGraph.build([atoms], cutoff=forcefield.potential.cutoff, dtype=torch.float64)
    out = forcefield(graph, compute_forces=False)
    dispersion = float(out["terms"].get("dispersion", torch.zeros(1))[0])
    return float(out["energy"][0]) - dispersion, dispersion


def dimer_row(dimer: Atoms, forcefield) -> dict:
    """Raw and counterpoise-corrected DFT interaction energies and the model's, kcal/mol."""
    mol_id = dimer.arrays["mol_id"]
    first, second = np.unique(mol_id)
    a, b = dimer[mol_id == first], dimer[mol_id == second]
    e_ab = scf_energy(dimer)
    raw = e_ab - scf_energy(a) - scf_energy(b)
    cp = e_ab - scf_energy(a, ghosts=b) - scf_energy(b, ghosts=a)
    (m_ab, d_ab), (m_a, d_a), (m_b, d_b) = (model_energies(forcefield, x) for x in (dimer, a, b))
    return {
        "species": dimer.info["species"], "source": dimer.info["source"], "atoms": len(dimer),
        "label_minus_recomputed_meV": (float(dimer.get_potential_energy()) - e_ab) * 1000,
        "dft_raw": raw * KCAL_PER_EV, "dft_cp": cp * KCAL_PER_EV, "bsse": (raw - cp) * KCAL_PER_EV,
        "model_no_dispersion": (m_ab - m_a - m_b) * KCAL_PER_EV, "d3": (d_ab - d_a - d_b) * KCAL_PER_EV,
    }


def pick_dimers(per_species: int, seed: int) -> list[Atoms]:
    """``per_species`` neutral solvent dimers of each homo-dimer kind (EC2, PC2, DMC2, EMC2, FEC2), by seed."""
    by_species = defaultdict(list)
    for atoms in read(DATA, index=":"):
        if atoms.info["cluster_kind"] == "solvent_dimer" and atoms.info["species"].endswith("2"):
            by_species[atoms.info["species"]].append(atoms)
    rng = np.random.default_rng(seed)
    chosen = []
    for species in sorted(by_species):
        group = by_species[species]
        chosen += [group[i] for i in sorted(rng.choice(len(group), size=min(per_species, len(group)), replace=False))]
    return chosen


def write_report(rows: list[dict], output: Path, command: str) -> None:
    import pyscf
    import torch

    import matsim

    keys = ("dft_raw", "dft_cp", "bsse", "model_no_dispersion", "d3")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "pyscf": pyscf.__version__, "torch": torch.__version__, "matsim": matsim.__version__,
            "command": command, "units": "kcal/mol"}
    output.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows, "mean": mean}, indent=1))
    lines = [
        "# Solvent-dimer interaction energies: B3LYP/def2-SVP raw vs counterpoise-corrected vs electrolyte-small",
        "",
        f"Date {meta['date']}; PySCF {meta['pyscf']}; torch {meta['torch']}; matsim {meta['matsim']}; CPU.",
        f"Command: `{command}`. kcal/mol; negative binds. Model columns: electrolyte-small without its D3 term"
        " (what it was fitted to) and the D3(BJ) term it adds at inference. The last column is the shipped model"
        " (with D3) minus BSSE-free B3LYP-D3(BJ) (ΔE CP + the same D3), i.e. model (no D3) − ΔE CP: negative means"
        " the model binds the dimer too strongly.",
        "",
        "| dimer | atoms | ΔE raw | ΔE CP | BSSE | model (no D3) | D3 | model − ΔE CP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["model_no_dispersion"] - r["dft_cp"]
        lines.append(f"| {r['species']} ({r['source']}) | {r['atoms']} | {r['dft_raw']:.2f} | {r['dft_cp']:.2f} | "
                     f"{r['bsse']:.2f} | {r['model_no_dispersion']:.2f} | {r['d3']:.2f} | {total:+.2f} |")
    total = mean["model_no_dispersion"] - mean["dft_cp"]
    lines.append(f"| **mean** | | {mean['dft_raw']:.2f} | {mean['dft_cp']:.2f} | {mean['bsse']:.2f} | "
                 f"{mean['model_no_dispersion']:.2f} | {mean['d3']:.2f} | {total:+.2f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-species", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="electrolyte-small")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/electrolyte/results/bsse"))
    args = parser.parse_args()
    command = (f"python benchmarks/electrolyte/bsse.py --per-species {args.per_species} --seed {args.seed} "
               f"--model {args.model} --output {args.output}")
    import torch

    from matsim.models import load_model
    from matsim.models.forcefield import ForceField

    forcefield = ForceField(load_model(args.model, device="cpu", dtype=torch.float64).eval())
    rows = []
    for dimer in pick_dimers(args.per_species, args.seed):
        rows.append(dimer_row(dimer, forcefield))
        print(json.dumps(rows[-1]), flush=True)
        write_report(rows, args.output, command)


if __name__ == "__main__":
    main()
