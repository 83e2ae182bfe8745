"""Interaction energies of two-molecule clusters: B3LYP/def2-SVP with and without the counterpoise correction, the
geometrical counterpoise correction (gCP) beside it, and the shipped model (issue 6: why do the liquids come out
too dense, and does gCP remove the cause?).

    # held-out solvent homo-dimers (the first measurement)
    python benchmarks/electrolyte/bsse.py --per-species 2 --output benchmarks/electrolyte/results/bsse
    # training-split pairs of three kinds: the calibration of gCP's scale
    python benchmarks/electrolyte/bsse.py --data benchmarks/electrolyte/data/dft-train.extxyz.xz \
        --kinds solvent_dimer anion_solvent li_shell --per-species 1 --max-per-kind 4 \
        --output benchmarks/electrolyte/results/gcp_calibration

For each chosen cluster of exactly two molecules (``mol_id``; each molecule's charge is the sum of its
``formal_charge``):

* ΔE_raw = E(AB) − E(A) − E(B), each monomer in its own basis (what the training labels see);
* ΔE_CP = E(AB) − E(A in the AB basis) − E(B in the AB basis), the Boys–Bernardi counterpoise correction: the
  monomers get the partner's basis functions on ghost atoms, so the basis-set superposition error (BSSE = ΔE_raw −
  ΔE_CP, negative: too much binding) cancels;
* gCP: the interaction part of the geometrical counterpoise correction (published B3LYP/def2-SVP parameters,
  positive), i.e. gCP's estimate of −BSSE;
* the model's ΔE without dispersion (what it was fitted to reproduce) and the D3(BJ) part it adds at inference.

The summary fits one factor s with BSSE ≈ −s·gCP (least squares through zero): the ``scale`` of a gCP calibrated
to this DFT setup (``matsim data gcp --scale``).

DFT as the labels were made: PySCF RKS, B3LYP, def2-SVP, density fitting, conv_tol 1e-9; energies in kcal/mol.
Writes OUTPUT.json and OUTPUT.md after every cluster; a rerun reuses the SCF energies already in OUTPUT.json (so it
resumes, and recomputes only the cheap columns).
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
SCF_KEYS = ("dft_raw", "dft_cp", "bsse", "label_minus_recomputed_meV")


def scf_energy(atoms: Atoms, charge: int, ghosts: Atoms | None = None) -> float:
    """B3LYP/def2-SVP energy (eV) of ``atoms`` with total ``charge``, plus basis functions of ``ghosts`` on ghost
    atoms."""
    from pyscf import dft, gto

    spec = [(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions.tolist())]
    if ghosts is not None:
        spec += [(f"ghost-{s}", p) for s, p in zip(ghosts.get_chemical_symbols(), ghosts.positions.tolist())]
    molecule = gto.M(atom=spec, basis="def2-SVP", charge=charge, spin=0, unit="Angstrom", verbose=0)
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


def split_pair(pair: Atoms) -> tuple[Atoms, Atoms, int, int]:
    """The two molecules of ``pair`` (by ``mol_id``) with their charges (sums of ``formal_charge``)."""
    mol_id = pair.arrays["mol_id"]
    first, second = np.unique(mol_id)
    charges = pair.arrays["formal_charge"]
    a, b = pair[mol_id == first], pair[mol_id == second]
    return a, b, int(round(charges[mol_id == first].sum())), int(round(charges[mol_id == second].sum()))


def interaction(energy, pair: Atoms) -> float:
    """E(AB) − E(A) − E(B) of an additive ``energy(atoms)`` (eV) over the two molecules of ``pair``."""
    a, b, _, _ = split_pair(pair)
    return energy(pair) - energy(a) - energy(b)


def scf_columns(pair: Atoms, counterpoise: bool = True) -> dict:
    """Raw and (with ``counterpoise``, else ``None``) counterpoise-corrected DFT interaction energies and the BSSE,
    kcal/mol."""
    a, b, charge_a, charge_b = split_pair(pair)
    e_ab = scf_energy(pair, charge_a + charge_b)
    raw = e_ab - scf_energy(a, charge_a) - scf_energy(b, charge_b)
    columns = {"label_minus_recomputed_meV": (float(pair.get_potential_energy()) - e_ab) * 1000,
               "dft_raw": raw * KCAL_PER_EV, "dft_cp": None, "bsse": None}
    if counterpoise:
        cp = e_ab - scf_energy(a, charge_a, ghosts=b) - scf_energy(b, charge_b, ghosts=a)
        columns.update(dft_cp=cp * KCAL_PER_EV, bsse=(raw - cp) * KCAL_PER_EV)
    return columns


def reusable_scf(known: dict, counterpoise: bool) -> dict | None:
    """The SCF columns of an earlier row, if it has every one this run needs."""
    if not all(k in known for k in SCF_KEYS) or (counterpoise and known["dft_cp"] is None):
        return None
    return {k: known[k] for k in SCF_KEYS}


def cheap_columns(pair: Atoms, forcefield) -> dict:
    """gCP's interaction correction, and for neutral molecules the model's interaction energy and D3 part, kcal/mol.

    The model's energy of a lone ion (a Li⁺ atom, a free anion) is an extrapolation: the training clusters hold ions
    only with neighbours, so the per-element reference energies absorb part of their solvation. Interaction energies
    of ionic pairs are therefore not compared with the model (``None``)."""
    from matsim.reference.gcp import GCPCalculator

    gcp = GCPCalculator(xc="b3lyp", basis="def2-SVP")

    def gcp_energy(atoms: Atoms) -> float:
        probe = atoms.copy()
        probe.calc = gcp
        return probe.get_potential_energy()

    a, b, charge_a, charge_b = split_pair(pair)
    columns = {"gcp": interaction(gcp_energy, pair) * KCAL_PER_EV, "model_no_dispersion": None, "d3": None}
    if charge_a == 0 and charge_b == 0:
        (m_ab, d_ab), (m_a, d_a), (m_b, d_b) = (model_energies(forcefield, x) for x in (pair, a, b))
        columns.update(model_no_dispersion=(m_ab - m_a - m_b) * KCAL_PER_EV, d3=(d_ab - d_a - d_b) * KCAL_PER_EV)
    return columns


def pick_pairs(data: Path, kinds: list[str], per_species: int, max_per_kind: int | None, seed: int) -> list[Atoms]:
    """Two-molecule clusters of ``data``: ``per_species`` of each species of each kind (solvent dimers: homo-dimers
    only), then at most ``max_per_kind`` of each kind, all chosen by ``seed``."""
    groups: dict[str, dict[str, list[Atoms]]] = defaultdict(lambda: defaultdict(list))
    for atoms in read(data, index=":"):
        kind, species = atoms.info["cluster_kind"], atoms.info["species"]
        if kind not in kinds or len(np.unique(atoms.arrays["mol_id"])) != 2:
            continue
        if kind == "solvent_dimer" and not species.endswith("2"):
            continue
        groups[kind][species].append(atoms)
    rng = np.random.default_rng(seed)
    chosen = []
    for kind in kinds:
        picked = []
        for species in sorted(groups[kind]):
            group = groups[kind][species]
            picked += [group[i] for i in sorted(rng.choice(len(group), size=min(per_species, len(group)),
                                                           replace=False))]
        if max_per_kind is not None and len(picked) > max_per_kind:
            picked = [picked[i] for i in sorted(rng.choice(len(picked), size=max_per_kind, replace=False))]
        chosen += picked
    return chosen


def fitted_scale(rows: list[dict]) -> dict:
    """Least-squares s with BSSE ≈ −s·gCP, and how well published (s = 1) and fitted gCP reproduce the BSSE."""
    bsse = np.array([r["bsse"] for r in rows])
    gcp = np.array([r["gcp"] for r in rows])
    scale = float(-(bsse @ gcp) / (gcp @ gcp))
    return {
        "scale": scale,
        "mae_published": float(np.mean(np.abs(bsse + gcp))),
        "mae_fitted": float(np.mean(np.abs(bsse + scale * gcp))),
        "correlation": float(np.corrcoef(bsse, -gcp)[0, 1]) if len(rows) > 1 else float("nan"),
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def _cell(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")


def write_report(rows: list[dict], output: Path, command: str) -> None:
    import pyscf
    import torch

    import matsim

    keys = ("dft_raw", "dft_cp", "bsse", "gcp", "model_no_dispersion", "d3")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    mean = {k: _mean(rows, k) for k in keys}
    measured = [r for r in rows if r["bsse"] is not None]
    fits = {} if not measured else {
        "all": fitted_scale(measured),
        **{kind: fitted_scale([r for r in measured if r["kind"] == kind]) for kind in kinds
           if any(r["kind"] == kind for r in measured)}}
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "pyscf": pyscf.__version__, "torch": torch.__version__, "matsim": matsim.__version__,
            "command": command, "units": "kcal/mol"}
    output.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows, "mean": mean, "gcp_fit": fits},
                                                      indent=1))
    lines = [
        "# Two-molecule interaction energies: B3LYP/def2-SVP raw vs counterpoise-corrected vs gCP vs electrolyte-small",
        "",
        f"Date {meta['date']}; PySCF {meta['pyscf']}; torch {meta['torch']}; matsim {meta['matsim']}; CPU.",
        f"Command: `{command}`. kcal/mol; negative binds. gCP: the interaction part of the published B3LYP/def2-SVP"
        " geometrical counterpoise correction (positive; it estimates −BSSE). Model columns (neutral pairs only: the"
        " model's energy of a lone ion is an extrapolation): the model without its D3 term (what it was fitted to)"
        " and the D3(BJ) term it adds at inference. The last column is the model (with D3) minus BSSE-free"
        " B3LYP-D3(BJ) (ΔE CP + the same D3), i.e. model (no D3) − ΔE CP: negative means the model binds the pair"
        " too strongly. The column before it, model (no D3) − ΔE raw, is the error of the fit itself.",
        "",
        "| pair | atoms | ΔE raw | ΔE CP | BSSE | gCP | model (no D3) | D3 | model − ΔE raw | model − ΔE CP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def difference(model: float | None, dft: float | None) -> float | None:
        return None if model is None or dft is None else model - dft

    for r in rows:
        lines.append(f"| {r['species']} ({r['source']}) | {r['atoms']} | {r['dft_raw']:.2f} | {_cell(r['dft_cp'])} | "
                     f"{_cell(r['bsse'])} | {r['gcp']:.2f} | {_cell(r['model_no_dispersion'])} | {_cell(r['d3'])} | "
                     f"{_cell(difference(r['model_no_dispersion'], r['dft_raw']), signed=True)} | "
                     f"{_cell(difference(r['model_no_dispersion'], r['dft_cp']), signed=True)} |")
    neutral = [r for r in rows if r["model_no_dispersion"] is not None]
    fit_errors = [r["model_no_dispersion"] - r["dft_raw"] for r in neutral]
    cp_errors = [e for r in neutral if (e := difference(r["model_no_dispersion"], r["dft_cp"])) is not None]
    fit_error = float(np.mean(fit_errors)) if fit_errors else None
    cp_error = float(np.mean(cp_errors)) if cp_errors else None
    lines.append(f"| **mean** | | {mean['dft_raw']:.2f} | {_cell(mean['dft_cp'])} | {_cell(mean['bsse'])} | "
                 f"{mean['gcp']:.2f} | {_cell(mean['model_no_dispersion'])} | {_cell(mean['d3'])} | "
                 f"{_cell(fit_error, signed=True)} | {_cell(cp_error, signed=True)} |")
    if fits:
        lines += ["", "BSSE ≈ −s·gCP, least squares through zero:", "",
                  "| pairs | n | mean BSSE | mean gCP | fitted s | correlation | mean abs. error, fitted s | "
                  "mean abs. error, s = 1 |", "|---|---|---|---|---|---|---|---|"]
    for name, fit in fits.items():
        group = measured if name == "all" else [r for r in measured if r["kind"] == name]
        lines.append(f"| {name} | {len(group)} | {_mean(group, 'bsse'):.2f} | {_mean(group, 'gcp'):.2f} | "
                     f"{fit['scale']:.3f} | {fit['correlation']:.2f} | {fit['mae_fitted']:.2f} | "
                     f"{fit['mae_published']:.2f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--kinds", nargs="+", default=["solvent_dimer"])
    parser.add_argument("--per-species", type=int, default=2)
    parser.add_argument("--max-per-kind", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-counterpoise", action="store_true", help="raw interaction energies only (2 fewer SCFs)")
    parser.add_argument("--model", default="electrolyte-small")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/electrolyte/results/bsse"))
    args = parser.parse_args()
    command = f"python benchmarks/electrolyte/bsse.py --per-species {args.per_species} --seed {args.seed}"
    if args.data != DATA:
        command += f" --data {args.data}"
    if args.kinds != ["solvent_dimer"]:
        command += f" --kinds {' '.join(args.kinds)}"
    if args.max_per_kind is not None:
        command += f" --max-per-kind {args.max_per_kind}"
    if args.no_counterpoise:
        command += " --no-counterpoise"
    command += f" --model {args.model} --output {args.output}"
    import torch

    from matsim.models import load_model
    from matsim.models.forcefield import ForceField

    forcefield = ForceField(load_model(args.model, device="cpu", dtype=torch.float64).eval())
    previous = {}
    if args.output.with_suffix(".json").exists():
        previous = {(r["source"], r["species"]): r
                    for r in json.loads(args.output.with_suffix(".json").read_text())["rows"]}
    rows = []
    for pair in pick_pairs(args.data, args.kinds, args.per_species, args.max_per_kind, args.seed):
        source = pair.info["source"]
        known = previous.get((source, pair.info["species"]), {})
        scf = reusable_scf(known, not args.no_counterpoise) or scf_columns(pair, not args.no_counterpoise)
        rows.append({"species": pair.info["species"], "kind": pair.info["cluster_kind"], "source": source,
                     "atoms": len(pair), **scf, **cheap_columns(pair, forcefield)})
        print(json.dumps(rows[-1]), flush=True)
        write_report(rows, args.output, command)


if __name__ == "__main__":
    main()
