"""Peer models for benchmarks/md_speed.py, run through their own ASE calculators: MACE and SevenNet-0.

Also holds what md_speed.py and the peers share (ASE, NumPy and torch only, so that it imports in MACE's environment
too): reading the system, the Maxwell-Boltzmann start + ASE NVT Langevin integrator of ``matsim md run``, and the
timing loop. Each peer runs in its own process because MACE pins e3nn 0.4.4 (its site folder goes first on
PYTHONPATH) while SevenNet and matsim use e3nn >= 0.5; it prints one JSON row on stdout. Called by md_speed.py; by
hand:

    python benchmarks/md_speed_peers.py --peer mace --data ../shared/data/bamboo_benchmark_system/in.data
    python benchmarks/md_speed_peers.py --peer sevenn --data ../shared/data/bamboo_benchmark_system/in.data

MACE: untrained weights with the MACE-MP-0 "small" architecture (benchmarks/inference_peers.py:untrained_mace),
output scaled by ``--output-scale`` as ours (cost unchanged), in ``mace.calculators.MACECalculator`` (float32,
e3nn backend, no cuEquivariance, no torch.compile). SevenNet-0 (11 Jul 2024, shipped weights) in
``sevenn.calculator.SevenNetCalculator``. Both build their neighbor list on the host at every step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ase import Atoms, units

HERE = Path(__file__).resolve().parent
PEER_NAMES = {"mace": "MACE (MP-0 small arch.)", "sevenn": "SevenNet-0"}


# ------------------------------------------------------------------------------------------------- the system


def read_system(path: Path) -> Atoms:
    """The periodic system in ``path``: a LAMMPS data file (``*.data``, atom_style full; ASE identifies the elements
    from the masses) or any file ASE reads. Returned as plain Atoms (numbers, positions wrapped into the cell, cell,
    pbc) with total charge 0."""
    import ase.io

    path = Path(path)
    if path.suffix == ".data" or path.name.startswith("in.") or path.name.startswith("data."):
        read = ase.io.read(path, format="lammps-data", atom_style="full", units="real")
    else:
        read = ase.io.read(path)
    atoms = Atoms(numbers=read.numbers, positions=read.positions, cell=read.cell, pbc=True)
    atoms.wrap()
    atoms.info["charge"] = 0
    return atoms


# ------------------------------------------------------------------------------------------------- the dynamics


def thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K drawn from ``rng`` (as matsim.md.runner does)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)


def langevin(atoms: Atoms, temperature: float, timestep_fs: float, friction_per_fs: float, rng: np.random.Generator):
    """ASE NVT Langevin with the arguments of matsim.md.runner.make_dynamics (thermostat ``langevin``)."""
    from ase.md.langevin import Langevin

    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction_per_fs / units.fs,
                    fixcm=False, rng=rng)


def time_md(dyn, atoms: Atoms, steps: int, warmup: int, device: str,
            nl_builds: Callable[[], int] | None = None) -> dict[str, Any]:
    """Run ``warmup`` steps, then time ``steps`` steps of ``dyn`` (whole ASE steps). Returns ms/step, steps/s, ns/day,
    neighbor-list builds during the timed steps, peak GPU memory (GiB, over the timed steps), the final temperature
    and whether the positions stayed finite. Raises what the calculator raises."""
    cuda = str(device).startswith("cuda")
    dyn.run(warmup)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    builds = nl_builds() if nl_builds else None
    start = time.perf_counter()
    dyn.run(steps)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    timestep_fs = dyn.dt / units.fs
    row: dict[str, Any] = {
        "ms/step": 1e3 * seconds,
        "steps/s": 1.0 / seconds,
        "ns/day": timestep_fs * 86400.0 / seconds / 1e6,
        "NL builds": nl_builds() - builds if nl_builds else None,
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "T end K": float(atoms.get_temperature()),
        "finite": bool(np.isfinite(atoms.positions).all()),
    }
    if not row["finite"]:
        row["error"] = "positions became non-finite"
    return row


def error_text(exc: BaseException) -> str:
    """One line for a table cell: the exception's type and the start of its message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}".replace("|", "/")


def count_calls(calc) -> Callable[[], int]:
    """Count ``calc.calculate`` calls (the peers build a fresh neighbor list in every one)."""
    calls = [0]
    original = calc.calculate

    def calculate(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    calc.calculate = calculate
    return lambda: calls[0]


# ------------------------------------------------------------------------------------------------- the peers


def mace_calculator(device: str, output_scale: float):
    """MACECalculator over an untrained MACE-MP-0-small-shaped model (benchmarks/inference_peers.py), float32."""
    from mace.calculators import MACECalculator

    sys.path.insert(0, str(HERE))
    from inference_peers import untrained_mace

    torch.manual_seed(0)
    model = untrained_mace(device)
    model.scale_shift.scale.mul_(output_scale)  # untrained output made small so MD stays stable; cost unchanged
    calc = MACECalculator(models=[model], device=device, default_dtype="float32")
    return calc, model


def sevenn_calculator(device: str):
    """SevenNet-0 (shipped weights) in its own ASE calculator."""
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator("7net-0", device=device)
    return calc, calc.model


def package_versions(peer: str) -> dict[str, str | None]:
    """Versions of the peer's packages in its environment (md_speed.py adds them to the provenance)."""
    import importlib.metadata

    names = {"mace": ["mace-torch", "e3nn"], "sevenn": ["sevenn"]}[peer]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        versions[name if name != "e3nn" else "e3nn (MACE's environment)"] = version
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=list(PEER_NAMES), required=True)
    parser.add_argument("--data", type=Path, required=True, help="the system (LAMMPS data file or any ASE file)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--friction-per-fs", type=float, default=0.01)
    parser.add_argument("--output-scale", type=float, default=0.01, help="factor on the untrained MACE's output")
    args = parser.parse_args()
    atoms = read_system(args.data)
    row: dict[str, Any] = {"model": PEER_NAMES[args.peer], "atoms": len(atoms)}
    try:
        if args.peer == "mace":
            calc, model = mace_calculator(args.device, args.output_scale)
        else:
            calc, model = sevenn_calculator(args.device)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        atoms.calc = calc
        rng = np.random.default_rng(args.seed)
        thermalize(atoms, args.temperature, rng)
        dyn = langevin(atoms, args.temperature, args.timestep_fs, args.friction_per_fs, rng)
        row.update(time_md(dyn, atoms, args.steps, args.warmup, args.device, count_calls(calc)))
    except Exception as exc:  # recorded in the row: the table shows why a peer has no number
        row["error"] = error_text(exc)
    row["versions"] = package_versions(args.peer)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
