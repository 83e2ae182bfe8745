"""Is a model repulsive where it has seen no data? A Li⁺ pushed onto its nearest O (issue 6: MD of the electrolyte
fine-tunes collapsed Li⁺–O, H···F and N···O contacts to 0.4 Å).

    python benchmarks/electrolyte/contact_probe.py --models electrolyte-small \
        benchmarks/electrolyte/checkpoints/electrolyte-small-v5.pt --output benchmarks/electrolyte/results/contact_probe

The first Li⁺ solvation shell of ``data/dft-test.extxyz.xz`` (held out): its Li⁺ is moved along the O→Li⁺ line so
that the Li–O distance is each of ``DISTANCES_A``, all else fixed; the energy (dispersion off) relative to the
2.0 Å point, per model, and per model with the ZBL repulsion term switched on (:mod:`matsim.models.layers.repulsion`,
no retraining: only the short-range wall is meaningful then). Physically the curve rises without bound (two
nuclei: > 100 eV at 0.4 Å).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from matsim.core.checkpoint import load_checkpoint
from matsim.core.graph import AtomGraph
from matsim.models import load_model
from matsim.models.forcefield import ForceField
from matsim.train.distill import without_dispersion
from matsim.train.finetune import switched_model

DATA = Path(__file__).parent / "data" / "dft-test.extxyz.xz"
DISTANCES_A = (2.0, 1.6, 1.3, 1.0, 0.8, 0.6, 0.4)


def probe_frames() -> list[Atoms]:
    """The held-out Li⁺ shell with its Li⁺ at each of ``DISTANCES_A`` from its nearest O."""
    shell = next(c for c in read(DATA, ":") if c.info["cluster_kind"] == "li_shell")
    symbols = np.array(shell.get_chemical_symbols())
    lithium = int(np.flatnonzero(symbols == "Li")[0])
    oxygens = np.flatnonzero(symbols == "O")
    oxygen = int(oxygens[np.argmin(np.linalg.norm(shell.positions[oxygens] - shell.positions[lithium], axis=1))])
    unit = shell.positions[lithium] - shell.positions[oxygen]
    unit /= np.linalg.norm(unit)
    frames = []
    for distance in DISTANCES_A:
        frame = shell.copy()
        frame.positions[lithium] = frame.positions[oxygen] + distance * unit
        frames.append(frame)
    return frames


def contact_energies(forcefield: ForceField, frames: list[Atoms]) -> list[float]:
    """Energy (eV) of the probe frames relative to the first."""
    energies = []
    for frame in frames:
        graph = AtomGraph.build([frame], cutoff=forcefield.potential.cutoff, dtype=torch.float64)
        energies.append(float(forcefield(graph, compute_forces=False)["energy"][0]))
    return [e - energies[0] for e in energies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["electrolyte-small"])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    frames = probe_frames()
    rows = []
    for name in args.models:
        plain = without_dispersion(load_model(name, device="cpu", dtype=torch.float64).eval())
        rows.append({"model": name, "repulsion": False, "energies_eV": contact_energies(ForceField(plain), frames)})
        if Path(name).is_file():
            with_zbl = switched_model(load_checkpoint(name), name, dispersion=None, repulsion=True).double().eval()
            rows.append({"model": name, "repulsion": True, "energies_eV": contact_energies(ForceField(with_zbl), frames)})
    command = f"python benchmarks/electrolyte/contact_probe.py --models {' '.join(args.models)} --output {args.output}"
    date = datetime.date.today().isoformat()
    args.output.with_suffix(".json").write_text(json.dumps(
        {"date": date, "command": command, "distances_A": DISTANCES_A, "rows": rows}, indent=1) + "\n")
    lines = ["# A Li⁺ pushed onto its nearest O: energy relative to the 2.0 Å contact (eV)", "",
             f"Date {date}; CPU, float64, dispersion off. Command: `{command}`", "",
             "| model | ZBL term | " + " | ".join(f"{d} Å" for d in DISTANCES_A) + " |",
             "|---|---|" + "---|" * len(DISTANCES_A)]
    lines += [f"| {r['model']} | {'on (not retrained)' if r['repulsion'] else 'off'} | "
              + " | ".join(f"{e:+.2f}" for e in r["energies_eV"]) + " |" for r in rows]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
