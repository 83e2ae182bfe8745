"""MD throughput (ns/day) of matsim potentials on the 4116-atom BAMBOO benchmark liquid (run on the GPU machine).

System: ../shared/data/bamboo_benchmark_system/in.data (LAMMPS data file; 14 LiPF6 in 182 EC + 182 DMC, 4116 atoms,
periodic cube of 35.92 Å; elements from its Masses section), or ``--data`` (any ASE-readable periodic file, e.g. a
small extxyz for a CPU smoke test). For every matsim model (the hyperparameters of benchmarks/inference.py; ``escaip-direct`` is escaip
with the non-conservative direct-force head) with untrained weights: the calculator of ``matsim md run``
(:class:`matsim.md.runner.MDCalculator`: float32, skin neighbor list, stress with every step), Maxwell-Boltzmann velocities at 300 K, and the integrator of ``matsim md run`` for an NVT Langevin
stage (:func:`matsim.md.runner.make_dynamics`: ASE ``Langevin``, 1 fs, friction 0.01 fs⁻¹); ``--warmup`` steps,
then ``--steps`` timed steps. MACE and SevenNet-0 run the same dynamics through their own ASE calculators, each in
its own process (benchmarks/md_speed_peers.py; MACE needs e3nn 0.4.4). ``--variants`` adds rows of our models run
through ``torch.compile`` and/or with TF32 matmuls (as in benchmarks/inference.py). Goal of issue 5: escaip ≥ 5 ns/day.

    python benchmarks/md_speed.py --variants eager compile compile+tf32 --peers mace sevenn --mace-pythonpath SITE
    python benchmarks/md_speed.py --device cpu --data /tmp/small.extxyz --steps 3 --warmup 1 --output /tmp/md_speed
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import provenance, write_results  # noqa: E402
from inference import MODELS, VARIANTS  # noqa: E402
from md_speed_peers import error_text, read_system, thermalize, time_md  # noqa: E402

from matsim.md.config import StageConfig  # noqa: E402
from matsim.md.runner import MDCalculator, make_dynamics  # noqa: E402
from matsim.models import model_class  # noqa: E402
from matsim.models import create  # noqa: E402

HERE = Path(__file__).resolve().parent
BAMBOO_DATA = "shared/data/bamboo_benchmark_system/in.data"
#: ../shared beside the checkout, shared/ inside it (the GPU machine's copy), then the repository's own copy.
DATA_CANDIDATES = [HERE.parents[1] / BAMBOO_DATA, HERE.parent / BAMBOO_DATA, HERE.parent / ".devdata/md/in.data"]
#: Rows of ours: label -> (architecture, hyperparameters), the models of benchmarks/inference.py.
OURS: dict[str, tuple[str, dict[str, Any]]] = {
    "bamboo": ("bamboo", MODELS["bamboo"]),
    "escaip": ("escaip", MODELS["escaip"]),
    "escaip-direct": ("escaip", {**MODELS["escaip"], "direct_forces": True}),
}
GOAL_NS_PER_DAY = 5.0
GOAL_COLUMN = f"≥ {GOAL_NS_PER_DAY:g} ns/day"
TEMPERATURE = 300.0
TIMESTEP_FS = 1.0


def data_path(given: Path | None) -> Path:
    for path in ([given] if given else DATA_CANDIDATES):
        if path.is_file():
            return path
    raise FileNotFoundError(f"system file not found: {given or ' or '.join(map(str, DATA_CANDIDATES))}")


def measure_ours(label: str, variant: str, atoms, stage: StageConfig, args: argparse.Namespace) -> dict[str, Any]:
    """One row: the MD throughput of matsim model ``label`` run as ``variant`` (errors are recorded in the row)."""
    architecture, hyperparameters = OURS[label]
    compile_model, tf32 = VARIANTS[variant]
    row: dict[str, Any] = {"model": label if variant == "eager" else f"{label} ({variant})", "atoms": len(atoms)}
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        torch.manual_seed(0)
        model = create(architecture, **hyperparameters)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        if hasattr(model, "energy_scale"):  # untrained output made small so that MD stays stable; cost unchanged
            model.energy_scale = args.output_scale
        calc = MDCalculator(model, device=args.device, dtype="float32", compile=compile_model)
        atoms = atoms.copy()
        atoms.calc = calc
        rng = np.random.default_rng(args.seed)
        thermalize(atoms, stage.temperature_K, rng)
        dyn = make_dynamics(stage, atoms, rng)
        neighbors = calc.neighbors
        row.update(time_md(dyn, atoms, args.steps, args.warmup, args.device, lambda: neighbors.n_builds))
    except Exception as exc:  # e.g. StructureError, out of memory: recorded, and the next model runs
        row["error"] = error_text(exc)
    finally:
        calc = model = dyn = atoms = None  # free the device memory before the next model
        torch.backends.cuda.matmul.allow_tf32 = False
        if str(args.device).startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def peer_row(peer: str, data: Path, stage: StageConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The row of a peer measured by md_speed_peers.py in its own process (and environment)."""
    env = dict(os.environ)
    if peer == "mace" and args.mace_pythonpath:
        env["PYTHONPATH"] = args.mace_pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 loads its constants with pickle
    command = [sys.executable, str(HERE / "md_speed_peers.py"), "--peer", peer, "--data", str(data.resolve()),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--seed", str(args.seed), "--temperature", str(stage.temperature_K),
               "--timestep-fs", str(stage.timestep_fs), "--friction-per-fs", str(stage.friction_per_fs),
               "--output-scale", str(args.output_scale)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not rows:
        print(f"peer {peer} failed:\n{result.stderr[-3000:]}", file=sys.stderr, flush=True)
    if not rows:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"model": peer, "error": f"peer process failed: {tail[0][:300]}".replace("|", "/")}
    return rows[-1]


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    """ns/day relative to MACE's (when MACE was measured) and whether each row meets the goal."""
    mace = next((r.get("ns/day") for r in rows if str(r["model"]).startswith("MACE")), None)
    for row in rows:
        ours = row.get("ns/day")
        if isinstance(ours, float):
            row[GOAL_COLUMN] = "yes" if ours >= GOAL_NS_PER_DAY else "no"
            if isinstance(mace, float):
                row["vs MACE"] = ours / mace


def command(args: argparse.Namespace) -> str:
    """The command line of this run (the MACE site folder shown as SITE)."""
    argv = list(sys.argv[1:])
    for i, arg in enumerate(argv[:-1]):
        if arg == "--mace-pythonpath":
            argv[i + 1] = "SITE"
    return shlex.join(["python", "benchmarks/md_speed.py", *argv])


def notes_text(rows: list[dict[str, Any]], atoms, stage: StageConfig, args: argparse.Namespace) -> str:
    verdicts = []
    for row in rows:
        if isinstance(row.get("ns/day"), float):
            verdict = "meets" if row[GOAL_COLUMN] == "yes" else "misses"
            verdicts.append(f"{row['model']} {row['ns/day']:.3g} ns/day ({verdict} it)")
        else:
            verdicts.append(f"{row['model']} has no result ({row.get('error', 'not run')})")
    escaip = [r for r in rows if r["model"].split(" ")[0] == "escaip" and isinstance(r.get("ns/day"), float)]
    goal = ("not measured in this run" if not escaip else
            "; ".join(f"{r['model']} {'meets' if r[GOAL_COLUMN] == 'yes' else 'misses'} it ({r['ns/day']:.3g} ns/day)"
                      for r in escaip))
    return (
        f"System: {atoms.get_chemical_formula()} ({len(atoms)} atoms, periodic box "
        f"{' x '.join(f'{x:.2f}' for x in atoms.cell.lengths())} Å). Timed: {args.steps} whole ASE MD steps after "
        f"{args.warmup} warm-up step(s) (mean ms/step), i.e. the integrator, the neighbor list (ours: vesin on the "
        "device with a 1 Å skin, rebuilt only when needed, 'NL builds' counts the rebuilds in the timed steps; MACE "
        "and SevenNet build theirs on the host in every call), the model's energy + forces, and the host↔device "
        "copies of positions and forces at every step. ns/day = steps/s x "
        f"{stage.timestep_fs:g} fs x 86400 s/day / 1e6 fs/ns. Dynamics: Maxwell-Boltzmann velocities at "
        f"{stage.temperature_K:g} K (seed {args.seed}), then ASE NVT Langevin at {stage.temperature_K:g} K, "
        f"{stage.timestep_fs:g} fs, friction {stage.friction_per_fs:g} fs⁻¹ (the integrator of `matsim md run`, "
        "thermostat langevin). float32; eager PyTorch unless the row says 'compile' (torch.compile, Inductor, "
        "dynamic shapes; compiled in the warm-up) or 'tf32' (TF32 matmuls, forces ~1e-3 relative from float32); no "
        "custom kernels, no cuEquivariance, peers eager float32. "
        "Untrained weights (the cost does not depend on them): matsim models with the hyperparameters of "
        "benchmarks/inference.py and MACE with the MP-0 'small' architecture (r 6 Å) have their output scaled by "
        f"{args.output_scale:g} (energy_scale / MACE's scale) so that the dynamics stay near "
        f"{stage.temperature_K:g} K ('T end K' in the JSON); SevenNet-0 uses its shipped weights (r 5 Å). "
        "Every calculator computes energy, forces and stress at every step (ours: as `matsim md run` does, "
        "for the pressure in thermo.csv), except escaip-direct: escaip with the direct-force head, non-conservative "
        "forces without a backward pass (its dynamics do not conserve energy); `matsim md run` computes its stress "
        "only on output steps and under a barostat (a backward pass each), and none fall in the timed NVT steps. 'peak GiB': "
        "torch.cuda.max_memory_allocated over the timed steps. "
        f"Goal (issue 5): escaip ≥ {GOAL_NS_PER_DAY:g} ns/day: {goal}. Per row: " + "; ".join(verdicts) + "."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(OURS), choices=list(OURS))
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANTS),
                        help="ways to run our models (benchmarks/inference.py): eager, compile, tf32, compile+tf32")
    parser.add_argument("--peers", nargs="*", default=[], choices=["mace", "sevenn"],
                        help="also run these peers (benchmarks/md_speed_peers.py) in their own processes")
    parser.add_argument("--mace-pythonpath", default=None, help="site folder with mace-torch and e3nn 0.4.4")
    parser.add_argument("--steps", type=int, default=200, help="timed MD steps")
    parser.add_argument("--warmup", type=int, default=20, help="MD steps before the timing")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke tests)")
    parser.add_argument("--data", type=Path, default=None,
                        help="system file (default: the BAMBOO benchmark in.data, LAMMPS data; any ASE file)")
    parser.add_argument("--output", type=Path, default=HERE / "md_speed")
    parser.add_argument("--seed", type=int, default=0, help="velocities and Langevin noise")
    parser.add_argument("--output-scale", type=float, default=0.01,
                        help="factor on the untrained models' energy output (keeps MD stable; cost unchanged)")
    args = parser.parse_args()
    data = data_path(args.data)
    atoms = read_system(data)
    print(f"{data}: {atoms.get_chemical_formula()}, {len(atoms)} atoms, cell "
          f"{np.round(atoms.cell.lengths(), 3).tolist()} Å", flush=True)
    stage = StageConfig(kind="nvt", steps=args.steps, timestep_fs=TIMESTEP_FS, temperature_K=TEMPERATURE,
                        thermostat="langevin")
    rows = []
    for label in args.models:
        for variant in args.variants:
            if VARIANTS[variant][0] and not model_class(OURS[label][0]).compilable:
                continue
            rows.append(measure_ours(label, variant, atoms, stage, args))
            print(rows[-1], flush=True)
    peer_versions: dict[str, Any] = {}
    for peer in args.peers:
        rows.append(peer_row(peer, data, stage, args))
        peer_versions.update(rows[-1].pop("versions", {}))
        print(rows[-1], flush=True)
    add_comparisons(rows)
    meta = provenance(["ase", "e3nn", "vesin-torch", "sevenn"])
    meta["versions"].update(peer_versions)
    meta["system"] = f"{data.name}: {atoms.get_chemical_formula()}, {len(atoms)} atoms"
    columns = ["model", "parameters", "atoms", "ms/step", "steps/s", "ns/day", "NL builds", "peak GiB", "vs MACE",
               GOAL_COLUMN]
    if any("error" in row for row in rows):
        columns.append("error")
    write_results(args.output, "MD throughput on the BAMBOO benchmark liquid", command(args), rows, columns, meta,
                  notes_text(rows, atoms, stage, args))
    print(f"wrote {args.output.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
