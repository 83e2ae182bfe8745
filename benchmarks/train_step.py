"""Time of one training step of the example bamboo (examples/train_ethanol_bamboo.yaml) and of its parts.

The model of the example config (channels 64, l_max 2, 3 layers; E0s, scale and neighbor count from the data) is
built by the real :class:`~matsim.train.Trainer` on rMD17 ethanol (9 atoms a frame), with ``--batch-size`` frames a
step (16 by default: 144 atoms, ~1150 edges). Two measurements:

- **parts**: the body of ``Trainer._train_epoch`` step by step, with a device synchronisation after each part (so
  on CUDA each part carries its own GPU time; the parts then add up to more than a real step, which overlaps them):
  ``collate`` (next batch from the trainer's DataLoader), ``to_device``, ``forward`` (ForceField(training=True) with
  forces, and the loss), ``backward``, ``optimizer`` (gradient clipping + AdamW), ``ema``, ``metrics``;
- **epoch**: the real ``Trainer._train_epoch`` over whole epochs (no extra synchronisation), as ms per step.

Medians over ``--steps`` steps after ``--warmup``; host-device synchronisations (``aten::_local_scalar_dense``:
``.item()``, ``float(t)``, ``bool(t)``) are counted per step with torch.profiler, and on CUDA the synchronisations
that ``torch.cuda.set_sync_debug_mode`` reports. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/train_step.py --threads 1                 # CPU, writes benchmarks/train_step.{json,md}
    python benchmarks/train_step.py --device cuda --output benchmarks/train_step_cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, provenance, write_results  # noqa: E402

from matsim.train import trainer as trainer_module  # noqa: E402
from matsim.train.config import load_train_config  # noqa: E402
from matsim.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_ethanol_bamboo.yaml"
DATA = next((p for p in (ROOT / "shared" / "data" / "rmd17_ethanol" / "train.xyz",
                         ROOT.parent / "shared" / "data" / "rmd17_ethanol" / "train.xyz") if p.is_file()),
            ROOT.parent / "shared" / "data" / "rmd17_ethanol" / "train.xyz")
PARTS = ("collate", "to_device", "forward", "backward", "optimizer", "ema", "metrics")


class _Clock:
    """Wall-clock marks with a device synchronisation before each (CUDA), so a part's GPU work is counted in it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.last = 0.0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self.last = self.now()

    def lap(self) -> float:
        t = self.now()
        elapsed, self.last = t - self.last, t
        return elapsed


def build_trainer(args: argparse.Namespace, run_dir: Path) -> Trainer:
    overrides = [f"run_dir={run_dir}", f"device={args.device}", f"dtype={args.dtype}",
                 f"optimizer.batch_size={args.batch_size}", f"data.train={args.data}", "training.progress=false",
                 "training.tensorboard=false", f"training.num_workers={args.num_workers}"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    return Trainer(load_train_config(EXAMPLE, overrides))


def _epoch_totals(trainer: Trainer):
    """The trainer's per-epoch metric accumulator (the legacy float() sums where the trainer has none)."""
    if hasattr(trainer_module, "EpochTotals"):
        return trainer_module.EpochTotals(list(trainer.loss_fn.weights), trainer.device)

    class _Legacy:  # what Trainer._train_epoch did before _EpochTotals: one float() per term and step
        def __init__(self) -> None:
            self.totals = {"loss": 0.0, **{t: 0.0 for t in trainer.loss_fn.weights}}

        def add(self, loss, terms, b):
            self.totals["loss"] += float(loss.detach()) * b
            for name, value in terms.items():
                self.totals[name] += float(value.detach()) * b

    return _Legacy()


def _to_device(graph, device: torch.device):
    mover = getattr(trainer_module, "_to_device", None)
    return mover(graph, device) if mover is not None else graph.to(device)


def one_step(trainer: Trainer, batches, totals, clock: _Clock | None, times: dict[str, list[float]] | None) -> torch.Tensor:
    """The body of Trainer._train_epoch for one batch; with a clock, each part's time is appended to ``times``."""
    lap = (lambda name: times[name].append(clock.lap())) if clock is not None else (lambda name: None)
    if clock is not None:
        clock.start()
    clip = trainer.config.training.clip_grad_norm
    graph = next(batches)
    lap("collate")
    graph = _to_device(graph, trainer.device)
    lap("to_device")
    lr = trainer.schedule.lr_at(trainer.step)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    loss, terms, _ = trainer.train_step(graph)
    lap("forward")
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lap("backward")
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), clip)
    trainer.optimizer.step()
    lap("optimizer")
    trainer.ema.update(trainer.model)
    trainer.step += 1
    lap("ema")
    totals.add(loss, terms, graph.num_systems)
    lap("metrics")
    return loss


def _batches(trainer: Trainer):
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch)
        yield from trainer.loader
        epoch += 1


def count_syncs(trainer: Trainer, steps: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    batches, totals = _batches(trainer), _epoch_totals(trainer)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            one_step(trainer, batches, totals, None, None)
    calls = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
    return calls / steps


def count_cuda_syncs(trainer: Trainer, steps: int) -> float | None:
    """Host-device synchronisations per step as CUDA reports them (``torch.cuda.set_sync_debug_mode``); None on CPU."""
    if trainer.device.type != "cuda":
        return None
    import warnings

    batches, totals = _batches(trainer), _epoch_totals(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                one_step(trainer, batches, totals, None, None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the part-by-part loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="whole epochs timed through Trainer._train_epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--label", default="", help="a name for this run in the table (e.g. before/after)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "train_step")
    parser.add_argument("--previous", type=Path, action="append", default=[],
                        help="a JSON file of an earlier run (e.g. before a change) whose rows go first in the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        device = trainer.device
        clock = _Clock(device)
        batches, totals = _batches(trainer), _epoch_totals(trainer)
        times: dict[str, list[float]] = {p: [] for p in PARTS}
        for _ in range(args.warmup):
            one_step(trainer, batches, totals, None, None)
        for _ in range(args.steps):
            one_step(trainer, batches, totals, clock, times)
        syncs = count_syncs(trainer, min(args.steps, 10))
        cuda_syncs = count_cuda_syncs(trainer, min(args.steps, 10))

        from matsim.train.reporting import Progress

        progress = Progress(trainer.console, enabled=False)
        epoch_ms = []
        for _ in range(args.epochs):
            start = clock.now()
            trainer._train_epoch(progress)
            epoch_ms.append(1e3 * (clock.now() - start) / len(trainer.loader))
            trainer.epoch += 1
        trainer.close()

    parts_ms = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    row = {"label": args.label or "-", "device": str(device), "dtype": args.dtype, "batch": args.batch_size,
           "atoms": 9 * args.batch_size, **{f"{p}_ms": parts_ms[p] for p in PARTS},
           "sum_of_parts_ms": sum(parts_ms.values()), "epoch_ms_per_step": min(epoch_ms),
           "steps_per_epoch": len(trainer.loader), "scalar_reads_per_step": syncs,
           "cuda_syncs_per_step": cuda_syncs,
           "threads": torch.get_num_threads()}
    meta = provenance(["e3nn", "torch-geometric"])
    command = command_line("benchmarks/train_step.py")
    columns = ["label", "device", "dtype", "batch", *[f"{p}_ms" for p in PARTS], "sum_of_parts_ms",
               "epoch_ms_per_step", "scalar_reads_per_step", "cuda_syncs_per_step", "threads"]
    notes = ("Parts: medians over the timed steps, a device sync after each part. epoch_ms_per_step: the real "
             "Trainer._train_epoch (no extra syncs), best of the timed epochs. scalar_reads_per_step: "
             "aten::_local_scalar_dense calls (item/float/bool of a tensor) per step under torch.profiler, host-only "
             "tensors included (AdamW reads its CPU step counters: 2 per parameter tensor on CPU, none on CUDA); "
             "cuda_syncs_per_step: synchronisations CUDA's sync debug mode reports (CUDA only).")
    import json

    rows = [r for path in args.previous for r in json.loads(path.read_text())["results"]] + [row]
    write_results(args.output, "Training step of the example bamboo on rMD17 ethanol", command, rows, columns, meta,
                  notes)
    for key, value in row.items():
        print(f"{key:>20}: {value:.3f}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
