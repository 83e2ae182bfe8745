"""Train the force-field benchmark runs (``configs/*.yaml``) side by side on one GPU, each with ``matsim train``.

    python benchmarks/forcefield/train.py rmd17_ethanol-bamboo rmd17_ethanol-escaip [--data-root DIR] [--limit-s S]

Each run writes ``runs/forcefield/NAME/`` (checkpoints, metrics.csv, errors.json) and ``runs/forcefield/NAME.log``;
a run whose ``resume.pt`` exists is continued with ``--resume``. ``--data-root`` replaces the
``../shared/data`` folder of the configs (e.g. a copy carried to the GPU machine); ``--limit-s`` stops a run that
has not finished by then (its last epoch is saved; ``--resume`` continues). Afterwards ``report.py`` builds the
table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "forcefield"


def command(name: str, data_root: Path | None) -> list[str]:
    config = HERE / "configs" / f"{name}.yaml"
    if not config.is_file():
        sys.exit(f"no config {config}")
    cmd = [sys.executable, "-m", "matsim", "train", str(config), "--set", "training.progress=false"]
    if data_root is not None:
        relative = Path(yaml.safe_load(config.read_text())["data"]["train"]).parts
        dataset = Path(*relative[relative.index("data") + 1:])
        cmd += ["--set", f"data.train={data_root / dataset}"]
    if (RUNS / name / "resume.pt").is_file():
        cmd.append("--resume")
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="config names under benchmarks/forcefield/configs")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--limit-s", type=float, default=None)
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    procs = {}
    start = time.monotonic()
    for name in args.runs:
        log = open(RUNS / f"{name}.log", "a")
        procs[name] = subprocess.Popen(command(name, args.data_root), stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=ROOT)
    while any(p.poll() is None for p in procs.values()):
        if args.limit_s is not None and time.monotonic() - start > args.limit_s:
            for name, p in procs.items():
                if p.poll() is None:
                    print(f"{name}: stopped at the time limit (continue with --resume)", flush=True)
                    p.terminate()
            for p in procs.values():
                p.wait()
            break
        time.sleep(2)
    for name, p in procs.items():
        print(f"{name}: exit {p.returncode} after {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
