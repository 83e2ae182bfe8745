"""How well does CHGNet, as matsim's hull oracle, reproduce DFT formation energies and energies above hull?

Data: ../shared/data/mp_20_subset (Materials Project, GGA/GGA+U with MP2020 corrections; 2100 structures of the
CDVAE MP-20 splits, all with DFT e_above_hull < 0.08 eV/atom). A seeded sample of targets is scored with the
library path that ``matsim score`` uses (:func:`matsim.metrics.hull.reference_entries` and
:func:`~matsim.metrics.hull.energy_above_hull`):

* energies: CHGNet 0.3.0 static energies of the DFT-relaxed structures (``max_steps=0``), for the targets and for
  every structure of the 2100 that lies in a target's chemical system (the competing phases);
* elemental references: for each element, the lowest CHGNet energy per atom among relaxed prototypes
  (fcc/bcc/hcp/ASE reference state, dimer in a box for H/N/O/halogens) and any elemental phase in the data;
* formation energy per atom = (E − Σ nᵢ μᵢ) / N with those μᵢ; compared with ``formation_energy_per_atom``;
* energy above hull of each target against the hull of the other structures (target removed), clipped at 0 as MP
  reports it; compared with MP's ``e_above_hull`` and with a DFT hull built from the same competing phases
  (DFT formation energies), which separates the oracle's error from the incompleteness of the 2100-structure pool.

Run (from the repository root; writes the .json and .md next to this script):
    python benchmarks/crystals/oracle_vs_dft.py --n 150 --seed 0
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import os
import platform
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition, Structure

from matsim.metrics.hull import chgnet_calculator, energy_above_hull, reference_entries

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data" / "mp_20_subset"
FILES = ("opryan90_train_subset.csv", "opryan90_val_subset.csv", "gabeguo_resplit_test.csv")
PROTOTYPE_TIMEOUT_S = 30.0


def load_rows() -> list[dict]:
    """All rows of the three CSVs with parsed structures (material ids are unique across files)."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    for name in FILES:
        with (DATA / name).open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({
                    "material_id": row["material_id"],
                    "elements": frozenset(ast.literal_eval(row["elements"])),
                    "e_form_dft": float(row["formation_energy_per_atom"]),
                    "e_hull_dft": float(row["e_above_hull"]),
                    "cif": row["cif"],
                    "file": name,
                })
    return rows


def dft_pool_e_hull(target: dict, pool: list[dict]) -> float:
    """DFT e_above_hull of the target against the other pool structures (formation energies, elements at 0)."""
    entries = [PDEntry(Composition({e: 1}), 0.0) for e in target["elements"]]
    entries += [PDEntry(r["composition"], r["e_form_dft"] * r["composition"].num_atoms, name=r["material_id"])
                for r in pool if r is not target and r["elements"] <= target["elements"]]
    candidate = PDEntry(target["composition"], target["e_form_dft"] * target["composition"].num_atoms)
    return energy_above_hull([candidate], entries)[0]


def mae(a: list[float], b: list[float]) -> float:
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": __import__("torch").get_num_threads(),
            "load_average_at_start": os.getloadavg(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=150, help="number of target structures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started, t0 = datetime.datetime.now(datetime.UTC), time.monotonic()
    host = machine()

    rows = load_rows()
    rng = np.random.default_rng(args.seed)
    targets = [rows[i] for i in rng.choice(len(rows), size=args.n, replace=False)]
    systems = {t["elements"] for t in targets}
    pool = [r for r in rows if any(r["elements"] <= s for s in systems)]
    for r in pool:
        r["structure"] = Structure.from_str(r["cif"], fmt="cif")
        r["composition"] = r["structure"].composition

    oracle = chgnet_calculator()
    refs = reference_entries(systems, oracle, known=[r["structure"] for r in pool], max_steps=0,
                             timeout_s=PROTOTYPE_TIMEOUT_S)
    t_energies = time.monotonic() - t0
    by_name = {e.name: e for e in refs.entries}
    for i, r in enumerate(pool):
        r["entry"] = by_name.get(f"known-{i}-{r['composition'].reduced_formula}")

    mu: dict[str, tuple[float, str]] = {}
    for e in refs.entries:
        if len(e.composition.elements) == 1:
            symbol = e.composition.elements[0].symbol
            source = "prototype" if "prototype" in e.name else "mp_20 phase"
            if symbol not in mu or e.energy_per_atom < mu[symbol][0]:
                mu[symbol] = (e.energy_per_atom, source)

    results = []
    for t in targets:
        entry = t["entry"]
        if entry is None:
            continue
        comp = entry.composition
        e_form = (entry.energy - sum(mu[el.symbol][0] * n for el, n in comp.items())) / comp.num_atoms
        others = [e for e in refs.entries if e is not entry]
        e_hull_raw = energy_above_hull([entry], others)[0]
        dft_raw = dft_pool_e_hull(t, pool)
        results.append({
            "material_id": t["material_id"], "formula": comp.reduced_formula, "n_atoms": len(t["structure"]),
            "e_form_dft": t["e_form_dft"], "e_form_chgnet": e_form,
            "e_hull_mp": t["e_hull_dft"], "e_hull_dft_pool_raw": dft_raw, "e_hull_dft_pool": max(0.0, dft_raw),
            "e_hull_chgnet_raw": e_hull_raw, "e_hull_chgnet": max(0.0, e_hull_raw),
        })

    def col(key: str) -> list[float]:
        return [r[key] for r in results]

    summary = {
        "n_targets": args.n, "n_scored": len(results), "n_reference_entries": len(refs.entries),
        "n_reference_failures": len(refs.failures), "n_competing_phases_from_mp20": len(pool),
        "mae_formation_energy_eV_per_atom": mae(col("e_form_chgnet"), col("e_form_dft")),
        "mean_signed_error_formation_energy_eV_per_atom": float(np.mean(
            np.subtract(col("e_form_chgnet"), col("e_form_dft")))),
        "mae_e_hull_chgnet_pool_vs_mp_eV_per_atom": mae(col("e_hull_chgnet"), col("e_hull_mp")),
        "mae_e_hull_chgnet_pool_vs_dft_pool_eV_per_atom": mae(col("e_hull_chgnet"), col("e_hull_dft_pool")),
        "mae_signed_e_hull_chgnet_vs_dft_same_pool_eV_per_atom": mae(col("e_hull_chgnet_raw"),
                                                                   col("e_hull_dft_pool_raw")),
        "mae_e_hull_dft_pool_vs_mp_eV_per_atom": mae(col("e_hull_dft_pool"), col("e_hull_mp")),
        "fraction_chgnet_e_hull_le_0.1": float(np.mean(np.asarray(col("e_hull_chgnet")) <= 0.1)),
        "fraction_chgnet_e_hull_le_0.0": float(np.mean(np.asarray(col("e_hull_chgnet_raw")) <= 0.0)),
        "fraction_mp_e_hull_eq_0": float(np.mean(np.asarray(col("e_hull_mp")) == 0.0)),
        "elemental_reference_source": {s: src for s, (_, src) in sorted(mu.items())},
        "wall_time_s": {"energies": round(t_energies, 1), "total": round(time.monotonic() - t0, 1)},
    }
    record = {
        "command": shlex.join(["python", "benchmarks/crystals/oracle_vs_dft.py", *sys.argv[1:]]),
        "date_utc": started.isoformat(timespec="seconds"), "seed": args.seed, "machine": host,
        "versions": {p: version(p) for p in ("matsim", "chgnet", "torch", "pymatgen", "ase", "numpy")},
        "oracle": "CHGNet 0.3.0 (weights shipped in the chgnet wheel), static energies, CPU",
        "summary": summary, "reference_failures": list(refs.failures), "per_structure": results,
    }
    (HERE / "oracle_vs_dft.json").write_text(json.dumps(record, indent=1) + "\n")
    (HERE / "oracle_vs_dft.md").write_text(markdown(record))
    print(json.dumps(summary, indent=1))


def markdown(record: dict) -> str:
    """The committed report: numbers from ``record`` and how the energies are referenced."""
    s, m = record["summary"], record["machine"]
    return f"""# CHGNet as hull oracle vs. DFT (Materials Project) on mp_20_subset

Command: `{record["command"]}` (from the repository root)
Date (UTC): {record["date_utc"]}; seed {record["seed"]}
Machine: {m["cpu"]}, {m["cores"]} cores, torch threads {m["torch_threads"]}, load average at start
{", ".join(f"{x:.1f}" for x in m["load_average_at_start"])} (shared machine); wall time {s["wall_time_s"]["total"]} s
Versions: {", ".join(f"{k} {v}" for k, v in record["versions"].items())}
Oracle: {record["oracle"]}

## Results ({s["n_scored"]} of {s["n_targets"]} seeded targets scored)

| quantity | MAE (eV/atom) |
|---|---|
| formation energy, CHGNet vs MP `formation_energy_per_atom` | {s["mae_formation_energy_eV_per_atom"]:.4f} |
| mean signed error of formation energy (CHGNet − DFT) | {s["mean_signed_error_formation_energy_eV_per_atom"]:+.4f} |
| E_hull: CHGNet (pool hull) vs MP `e_above_hull` | {s["mae_e_hull_chgnet_pool_vs_mp_eV_per_atom"]:.4f} |
| E_hull: CHGNet (pool hull) vs DFT on the same pool hull, both clipped at 0 | {s["mae_e_hull_chgnet_pool_vs_dft_pool_eV_per_atom"]:.4f} |
| signed E_hull (target removed from the hull, not clipped): CHGNet vs DFT, same pool | {s["mae_signed_e_hull_chgnet_vs_dft_same_pool_eV_per_atom"]:.4f} |
| E_hull: DFT on the pool hull vs MP (pool incompleteness alone) | {s["mae_e_hull_dft_pool_vs_mp_eV_per_atom"]:.4f} |

Fractions of targets: CHGNet E_hull ≤ 0.1 eV/atom: {s["fraction_chgnet_e_hull_le_0.1"]:.3f};
CHGNet E_hull ≤ 0 (target excluded from the hull): {s["fraction_chgnet_e_hull_le_0.0"]:.3f};
MP e_above_hull = 0: {s["fraction_mp_e_hull_eq_0"]:.3f} (every MP-20 structure has DFT E_hull < 0.08 eV/atom).
Reference entries: {s["n_reference_entries"]} ({s["n_competing_phases_from_mp20"]} mp_20 structures in the targets'
chemical systems + elemental prototypes), {s["n_reference_failures"]} oracle failures.
Per-structure values are in `oracle_vs_dft.json`.

## How the energies are referenced

* All energies are CHGNet 0.3.0 static energies of the DFT-relaxed MP structures; only the elemental prototypes are
  relaxed (FIRE + FrechetCellFilter, ≤ 50 steps, fmax 0.1 eV/Å), because their lattice constants are guesses.
* Formation energy = (E − Σ nᵢ μᵢ)/N, with μᵢ the lowest CHGNet energy per atom among the element's prototypes
  (fcc, bcc, hcp, ASE's tabulated reference state; a dimer in a 12 Å box for H, N, O and halogens) and any elemental
  phase in the 2100 mp_20 structures — all computed by the same oracle. MP's μᵢ are its DFT ground states; where
  ours are not the true ground state (B, Ga, P, S, Se, Mn, ... have complex ground states absent from both sets)
  the formation energies of their compounds are shifted (the per-element source is listed at the end).
* MP2020 corrections: MP's `formation_energy_per_atom` and `e_above_hull` include the MP2020 compatibility
  corrections (anion and GGA/GGA+U mixing). CHGNet's raw output has no correction step, but CHGNet was *trained* on
  MPtrj `energy_per_atom`, which is the MP2020-corrected energy (MPtrj data description, Deng et al. 2023). So its
  energies already live on the corrected scale and no correction is applied here; applying MP2020 again would
  double-count. (The dimer-in-a-box O₂/N₂/… references are on MPtrj's scale too: MP2020 corrects compounds, not the
  elemental gas references.)
* E_hull: each target against the hull of all other reference entries of its chemical system (target removed, so
  the raw value can be negative, as `matsim score` reports it), clipped at 0 to compare with MP, whose hull contains
  the target. The competing phases are only those among the 2100 mp_20 structures, not all of MP: the "DFT on the
  pool hull" row measures what that incompleteness alone costs, and the two "same pool" rows are the oracle's own
  error; the signed one (distance to the hull of the other phases, which is negative for a hull phase) is the
  sensitive test, as clipping hides errors of phases on the hull.

Elemental reference source per element: {", ".join(f"{k}: {v}" for k, v in s["elemental_reference_source"].items())}.
"""


if __name__ == "__main__":
    main()
