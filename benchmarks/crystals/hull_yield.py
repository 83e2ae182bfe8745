"""Stable crystals per 1,000 candidates: sample folders (``matsim generate`` output, model or random-search
baseline) relaxed by the CHGNet oracle in parallel worker processes (one thread each) and placed on one shared
convex hull.

Every folder's first ``--n`` candidates are read (a missing or unreadable CIF is a failed candidate and stays in
the denominator); the structurally valid ones are relaxed (FIRE + cell filter, the library's settings), and the
reference phases of all their chemical systems (elemental prototypes plus the ``--reference`` crystals inside
those systems) are relaxed once and shared, so that the folders are compared on the same hull. This is the
equal-compute comparison of UniMat's paper: a conditional model and random structure search given the same
compositions (``matsim generate`` with the same ``compositions_from`` and seed) and the same number of candidates.

Run from the repository root, one worker per CPU core:
    python benchmarks/crystals/hull_yield.py runs/rs runs/unimat-plan --reference ../shared/data/perov_5/pool.csv \\
        --n 500 --workers 16 --device cpu --name hull_yield_perov5

Writes ``NAME.json`` / ``NAME.md`` next to this script, with every candidate's energy above hull in the JSON.
Each finished relaxation is appended to ``--cache`` (default ``runs/hull_yield/NAME.jsonl``) with a progress
line every 25, so a stopped run continues where it was when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import command_line, provenance, write_results  # noqa: E402

COLUMNS = ["samples", "source", "n", "n_valid", "n_relaxed", "stable_0.0", "stable_0.1", "sun_0.1",
           "stable_per_1000_0.0", "stable_per_1000_0.1", "sun_per_1000_0.1", "mean_e_above_hull"]


def main() -> None:
    from pymatgen.analysis.phase_diagram import PDEntry

    from matsim.datasets.crystals import CrystalDataset
    from matsim.metrics.crystal import distinct_mask, novel_mask, read_structures, structure_validity
    from matsim.metrics.hull import (DEFAULT_FMAX, DEFAULT_MAX_STEPS, DEFAULT_TIMEOUT_S, CachedRelaxer,
                                     ParallelRelaxer, chemical_system, chgnet_calculator, energy_above_hull,
                                     per_thousand_candidates, reference_entries, stability_metrics)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="matsim generate output folders")
    parser.add_argument("--reference", type=Path, required=True, help="training CSV: known phases and novelty")
    parser.add_argument("--n", type=int, default=1000, help="candidates per folder (its first N)")
    parser.add_argument("--workers", type=int, default=1, help="relaxation processes")
    parser.add_argument("--device", default="cpu", help="CHGNet device of every worker (cpu, cuda)")
    parser.add_argument("--name", default="hull_yield")
    parser.add_argument("--cache", type=Path, default=None, help="JSON lines of finished relaxations (resume)")
    args = parser.parse_args()
    cache = args.cache or Path("runs") / "hull_yield" / f"{args.name}.jsonl"

    start = time.monotonic()
    training = CrystalDataset.from_csv(args.reference).structures()
    folders = []
    for folder in args.folders:
        info = json.loads((folder / "metrics.json").read_text())
        paths = [folder / "structures" / f"{i:06d}.cif" for i in range(min(args.n, info["n_requested"]))]
        samples = [read_structures([p])[0] if p.exists() else None for p in paths]
        valid = [structure_validity(s) for s in samples]
        folders.append({"folder": folder, "info": info, "samples": samples, "valid": valid,
                        "unique": distinct_mask(samples), "novel": novel_mask(samples, training)})
    jobs = [(k, i) for k, f in enumerate(folders) for i, ok in enumerate(f["valid"]) if ok]
    print(f"{len(jobs)} valid candidates in {len(folders)} folders; relaxing with {args.workers} workers on "
          f"{args.device}", flush=True)

    factory = functools.partial(chgnet_calculator, device=args.device)
    def report(done: int, total: int) -> None:
        print(f"  {done}/{total} relaxed, {time.monotonic() - start:.0f} s", flush=True)

    with ParallelRelaxer(factory, args.workers) as workers:
        relaxer = CachedRelaxer(workers, cache, progress=report, report_every=25)
        print(f"{len(relaxer)} relaxations read back from {cache}", flush=True)
        structures = [folders[k]["samples"][i] for k, i in jobs]
        relaxed = dict(zip(jobs, relaxer.relax_all(structures, [DEFAULT_MAX_STEPS] * len(jobs)), strict=True))
        candidates = {key: PDEntry(r.structure.composition, r.energy, name=f"{key}") for key, r in relaxed.items()
                      if r.ok}
        candidate_time = time.monotonic() - start
        print(f"candidates relaxed in {candidate_time:.0f} s", flush=True)
        systems = {chemical_system(entry.composition) for entry in candidates.values()}
        references = reference_entries(systems, relaxer, known=training)
    print(f"{len(references.entries)} reference entries; total {time.monotonic() - start:.0f} s", flush=True)

    rows, per_sample = [], {}
    for k, f in enumerate(folders):
        n = len(f["samples"])
        entries = [candidates.get((k, i)) for i in range(n)]
        e_hull = energy_above_hull(entries, references.entries)
        failures = [f"candidate-{i}: {relaxed[(k, i)].error}" for i in range(n)
                    if (k, i) in relaxed and not relaxed[(k, i)].ok]
        metrics = stability_metrics(e_hull, f["unique"], f["novel"], failures=failures).to_dict()
        yields = per_thousand_candidates(e_hull, n, f["unique"], f["novel"])
        source = f["info"].get("checkpoint") or {}
        row = {"samples": f["folder"].name,
               "source": source.get("model") or (f["info"].get("baseline") or {}).get("name"),
               "n": n, "n_valid": sum(f["valid"]), "n_relaxed": sum(1 for e in entries if e is not None)}
        row |= {key: metrics[key] for key in ("stable_0.0", "stable_0.1", "sun_0.1", "mean_e_above_hull")}
        row |= {key: yields[key] for key in ("stable_per_1000_0.0", "stable_per_1000_0.1", "sun_per_1000_0.1")}
        rows.append(row)
        per_sample[f["folder"].name] = {"e_above_hull": e_hull, "failures": failures}
        print(json.dumps(row), flush=True)

    meta = provenance(["pymatgen", "chgnet", "ase"]) | {
        "reference": str(args.reference), "n_per_folder": args.n, "workers": args.workers, "oracle_device": args.device,
        "relaxation": {"max_steps": DEFAULT_MAX_STEPS, "fmax_eV_per_A": DEFAULT_FMAX, "timeout_s": DEFAULT_TIMEOUT_S},
        "n_reference_entries": len(references.entries), "reference_failures": list(references.failures),
        "candidate_relaxation_s": round(candidate_time, 1), "wall_time_s": round(time.monotonic() - start, 1),
        "folders": {f["folder"].name: {"checkpoint": f["info"].get("checkpoint"),
                                       "compositions": f["info"].get("compositions")
                                       or (f["info"].get("baseline") or {}).get("compositions"),
                                       "sampling": f["info"].get("sampling")} for f in folders},
    }
    write_results(HERE / args.name, "Stable crystals per 1,000 candidates on one shared CHGNet hull",
                  command_line("benchmarks/crystals/hull_yield.py"), rows, COLUMNS, meta,
                  notes="Fractions and per-1,000 yields are over all candidates (failed and invalid ones count as "
                        "not stable). The hull holds the elemental prototypes and the reference CSV's crystals in "
                        "the candidates' chemical systems, all relaxed by the same oracle; no other competing "
                        "phases, so it is a loose hull: compare folders on it, not with MP-hull numbers.")
    (HERE / f"{args.name}.json").write_text(json.dumps(
        json.loads((HERE / f"{args.name}.json").read_text()) | {"per_sample": per_sample}, indent=1) + "\n")


if __name__ == "__main__":
    main()
