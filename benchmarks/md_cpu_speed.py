"""MD step cost of candidate `electrolyte-small` bamboo configurations on the CPU demo box (2 cores, float32).

Box: the periodic 1 M LiPF6 EC:DMC liquid that ``matsim md run examples/electrolyte.yaml`` builds (the YAML's
``system`` section through :func:`matsim.md.builder.build_box`; 302 atoms, 15.1 Å edge). For every candidate model
(randomly initialised: the cost does not depend on the weights) and every combination of long-range terms

- ``short``: the equivariant transformer only,
- ``+coulomb``: plus the Ewald energy of the learned charges,
- ``+d3``: plus D3(BJ) dispersion,
- ``full``: both,

the model is wrapped in :class:`matsim.MatSimCalculator` (skin neighbor list, as in MD) and energy + forces + stress
are evaluated on MD-like configurations: every step all atoms move 0.01 Å in random directions. Reported: median
and fastest ms/step after warm-up, steps/s, the Coulomb and D3 shares (fastest ``+coulomb`` / ``+d3`` minus fastest
``short``: the least disturbed estimate on a shared machine), neighbor-list rebuilds, and the wall time of the
example's 1600 evaluations (200 minimise + 400 NPT + 1000 NVT steps). ``--fresh-lists CONFIG`` adds rows with the
Ewald and D3 pair lists rebuilt on every call, as before they were reused between steps.

    python benchmarks/md_cpu_speed.py --fresh-lists c5-ch32-l1-L2   # writes benchmarks/md_cpu_speed.json / .md
    python benchmarks/md_cpu_speed.py --configs c5-ch32-l1-L2 --variants full --steps 40 --output /tmp/md_speed
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import provenance, write_results  # noqa: E402

from matsim.calculator import MatSimCalculator  # noqa: E402
from matsim.md.builder import build_box  # noqa: E402
from matsim.md.config import load_md_config  # noqa: E402
from matsim.models import create  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "electrolyte.yaml"
SPECIES = [1, 3, 6, 8, 9, 15]  # H Li C O F P
FUNCTIONAL = "b3lyp"  # the default xc of matsim.reference.dft (labels without dispersion, D3(BJ) added at inference)
#: Evaluations of the example run: 200 minimise + 400 NPT + 1000 NVT steps.
EXAMPLE_STEPS = 1600
COMMON = dict(species=SPECIES, num_heads=4, num_radial=8, charges=True, coulomb_smearing=0.7)
#: Candidate architectures: name -> bamboo arguments (on top of COMMON); avg_num_neighbors ~ neighbors within the
#: cutoff in the liquid (0.088 atoms/Å³).
CANDIDATES: dict[str, dict[str, Any]] = {
    "c4.5-ch16-l1-L1": dict(cutoff=4.5, channels=16, l_max=1, num_layers=1, radial_hidden=16, avg_num_neighbors=30.0),
    "c4.5-ch32-l1-L2": dict(cutoff=4.5, channels=32, l_max=1, num_layers=2, radial_hidden=32, avg_num_neighbors=30.0),
    "c5-ch16-l1-L2": dict(cutoff=5.0, channels=16, l_max=1, num_layers=2, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch24-l1-L2": dict(cutoff=5.0, channels=24, l_max=1, num_layers=2, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch32-l1-L1": dict(cutoff=5.0, channels=32, l_max=1, num_layers=1, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch32-l1-L2": dict(cutoff=5.0, channels=32, l_max=1, num_layers=2, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch32-l1-L3": dict(cutoff=5.0, channels=32, l_max=1, num_layers=3, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch32-l2-L2": dict(cutoff=5.0, channels=32, l_max=2, num_layers=2, radial_hidden=32, avg_num_neighbors=40.0),
    "c5-ch48-l1-L2": dict(cutoff=5.0, channels=48, l_max=1, num_layers=2, radial_hidden=48, avg_num_neighbors=40.0),
    "c5-ch64-l1-L2": dict(cutoff=5.0, channels=64, l_max=1, num_layers=2, radial_hidden=64, avg_num_neighbors=40.0),
}
#: Long-range terms of each variant: (electrostatics, dispersion).
VARIANTS: dict[str, tuple[bool, str | None]] = {
    "short": (False, None),
    "+coulomb": (True, None),
    "+d3": (False, FUNCTIONAL),
    "full": (True, FUNCTIONAL),
}


def example_box(path: Path) -> Atoms:
    """The periodic box of the example's ``system`` section (packmol, deterministic for a given seed)."""
    config = load_md_config(path)
    if config.system is None:
        raise ValueError(f"{path} reads a structure file; this benchmark needs a 'system' section")
    return build_box(config.system)


def forget_pair_lists(model: torch.nn.Module) -> None:
    """Drop the long-range terms' reused pair lists (Ewald real space, D3), so the next call builds fresh ones."""
    for module in model.modules():
        lists = getattr(module, "_pair_lists", None)
        if isinstance(lists, dict):
            lists.clear()


def time_calculator(calc: MatSimCalculator, atoms: Atoms, steps: int, warmup: int, step_size: float,
                    seed: int, fresh_lists: bool = False) -> list[float]:
    """Seconds of each energy + forces + stress call on MD-like configurations (all atoms move ``step_size`` Å);
    ``fresh_lists``: rebuild the long-range pair lists every call (the behaviour before they were reused)."""
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    times = []
    for step in range(warmup + steps):
        direction = rng.normal(size=(len(atoms), 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        atoms.positions = atoms.positions + step_size * direction
        if fresh_lists:
            forget_pair_lists(calc.potential)
        start = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)
    return times


def measure(name: str, variant: str, atoms: Atoms, args: argparse.Namespace,
            fresh_lists: bool = False) -> dict[str, Any]:
    """One row: ms/step of a candidate with the long-range terms of ``variant`` (``fresh_lists``: see
    :func:`time_calculator`)."""
    electrostatics, dispersion = VARIANTS[variant]
    torch.manual_seed(0)
    model = create("bamboo", **COMMON, **CANDIDATES[name], electrostatics=electrostatics, dispersion=dispersion)
    calc = MatSimCalculator(model, device="cpu", dtype="float32", skin=args.skin)
    times = time_calculator(calc, atoms, args.steps, args.warmup, args.step_size, args.seed, fresh_lists)
    seconds = statistics.median(times)
    return {
        "config": name,
        "variant": variant + (" (fresh lists)" if fresh_lists else ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "ms/step": 1e3 * seconds,
        "min ms": 1e3 * min(times),
        "steps/s": 1.0 / seconds,
        "NL builds": calc.neighbors.n_builds,
        "example run min": EXAMPLE_STEPS * seconds / 60.0,
    }


def add_splits(rows: list[dict[str, Any]]) -> None:
    """Coulomb and D3 shares of each config's cost: fastest ``+coulomb`` / ``+d3`` call minus fastest ``short`` call
    (the minimum is the estimate least disturbed by other processes on the machine)."""
    by_key = {(r["config"], r["variant"]): r["min ms"] for r in rows}
    for row in rows:
        short = by_key.get((row["config"], "short"))
        if not row["variant"].startswith("full") or short is None:
            continue
        suffix = row["variant"][len("full"):]
        row["short ms"] = short
        for term, variant in (("coulomb ms", "+coulomb"), ("d3 ms", "+d3")):
            if (row["config"], variant + suffix) in by_key:
                row[term] = by_key[(row["config"], variant + suffix)] - short


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=20, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--step-size", type=float, default=0.01, help="displacement of every atom per step, Å")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbor-list skin of the calculator, Å")
    parser.add_argument("--fresh-lists", nargs="*", default=[], choices=list(CANDIDATES), metavar="CONFIG",
                        help="also time these configs with the Ewald and D3 pair lists rebuilt on every call (the "
                             "behaviour before they were reused)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example", type=Path, default=EXAMPLE)
    parser.add_argument("--output", type=Path, default=HERE / "md_cpu_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]  # other processes on the machine distort the timings: recorded with them
    atoms = example_box(args.example)
    print(f"box: {len(atoms)} atoms, edge {atoms.cell.lengths()[0]:.2f} Å, {atoms.info['composition']}", flush=True)
    rows = []
    for name in args.configs:
        runs = [(variant, False) for variant in args.variants]
        if name in args.fresh_lists:
            runs += [(variant, True) for variant in args.variants if variant != "short"]
        for variant, fresh in runs:
            rows.append(measure(name, variant, atoms, args, fresh))
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    add_splits(rows)
    meta = provenance(["e3nn", "vesin", "tad-dftd3"])
    meta["threads"] = torch.get_num_threads()
    meta["load average (1 min) at start/end"] = f"{load_start:.2f} / {os.getloadavg()[0]:.2f}"
    meta["atoms"] = len(atoms)
    columns = ["config", "variant", "parameters", "ms/step", "min ms", "steps/s", "short ms", "coulomb ms", "d3 ms",
               "NL builds", "example run min"]
    command = "python benchmarks/md_cpu_speed.py " + " ".join(
        [f"--steps {args.steps}", f"--threads {args.threads}"]
        + ([f"--fresh-lists {' '.join(args.fresh_lists)}"] if args.fresh_lists else [])
        + ([f"--configs {' '.join(args.configs)}"] if args.configs != list(CANDIDATES) else [])
        + ([f"--variants {' '.join(args.variants)}"] if args.variants != list(VARIANTS) else []))
    notes = (f"Box of {args.example.name} ({len(atoms)} atoms, periodic). Untrained bamboo models (species H Li C O F "
             f"P, 4 heads, 8 radial functions, charges on), float32, torch threads = {args.threads}, through "
             f"MatSimCalculator (skin {args.skin} Å) with energy + forces + stress every call, as the MD runner "
             f"does. Each call follows a move of every atom by {args.step_size} Å in a random direction; median of "
             f"{args.steps} calls after {args.warmup} warm-up calls (the first builds the neighbor list). "
             f"Coulomb: Gaussian-damped (σ 0.7 Å) Ewald, accuracy 1e-6, automatic α. D3: D3(BJ) {FUNCTIONAL}, "
             "two-body cutoff 12 Å, CN cutoff 10 Å; both reuse their pair lists with a 1 Å skin unless marked "
             "'(fresh lists)'. 'short ms', 'coulomb ms' and 'd3 ms' (on the full rows) split the cost from the "
             "fastest calls: 'short', and '+coulomb' / '+d3' minus 'short'. 'example run min': 1600 calls "
             "(200 minimise + 400 NPT + 1000 NVT) at the median cost, integrator and I/O not included.")
    write_results(args.output, "MD step cost of electrolyte-small candidates on the CPU demo box", command, rows,
                  columns, meta, notes)


if __name__ == "__main__":
    main()
