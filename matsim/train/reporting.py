"""Run reporting: loss sums kept on the device, the metrics log (CSV, TensorBoard), the progress bar."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import torch

from matsim.train.distributed import Distributed


class EpochTotals:
    """Sums of ``loss × systems`` and of each loss term × systems over an epoch, kept in one float64 tensor on the
    device (no ``float(loss)`` read-back per step); read once per epoch, after the DDP sum.

    The arithmetic is that of the Python floats it replaces (float32 → float64 exactly, then float64 products and
    sums in the same order), so the logged numbers are bit for bit the same."""

    def __init__(self, terms: list[str], device: torch.device) -> None:
        self.names = ["loss", *terms]
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.systems = 0

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], num_systems: int) -> None:
        values = torch.stack([loss.detach(), *(terms[name].detach() for name in self.names[1:])])
        self.sums += values.to(torch.float64) * num_systems
        self.systems += num_systems

    def result(self, distributed: "Distributed") -> dict[str, float]:
        summed = distributed.sum(self.sums.tolist() + [self.systems], self.sums.device)
        count = max(summed[-1], 1.0)
        return {f"train_{'loss' if n == 'loss' else n + '_loss'}": v / count for n, v in zip(self.names, summed[:-1])}


class MetricsLog:
    """``metrics.csv`` (one row per epoch, floats written exactly) and TensorBoard events when installed.

    On resume, rows after the resumed epoch (written by an interrupted run after its last saved state) are dropped.
    A row with new keys (validation metrics first appear at epoch ``valid_every``) widens the header; earlier rows
    are left empty there.
    """

    def __init__(self, run_dir: Path, weights: dict[str, float], enabled: bool, tensorboard: bool, resume_epoch: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.writer = None
        self.fields: list[str] | None = None
        if not enabled:
            return
        if self.path.exists():
            if resume_epoch == 0:
                self.path.unlink()  # left by a run that stopped before saving its first state
            else:
                with open(self.path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
                if rows:
                    self.fields = list(rows[0].keys())
                    kept = [r for r in rows if int(r["epoch"]) <= resume_epoch]
                    if len(kept) != len(rows):
                        with open(self.path, "w", newline="") as handle:
                            w = csv.DictWriter(handle, self.fields)
                            w.writeheader()
                            w.writerows(kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.writer = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        elif not set(row) <= set(self.fields):  # e.g. the first validation: rewrite with the wider header
            self._widen([k for k in row if k not in self.fields])
        with open(self.path, "a", newline="") as handle:
            w = csv.DictWriter(handle, self.fields)
            if new:
                w.writeheader()
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch",) and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def _widen(self, extra: list[str]) -> None:
        """Add columns ``extra`` to the header; earlier rows get empty values there."""
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        self.fields = [*self.fields, *extra]
        with open(self.path, "w", newline="") as handle:
            w = csv.DictWriter(handle, self.fields)
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """Rich progress bars (epochs with ETA, batches of the epoch) on a terminal; one line per epoch otherwise."""

    def __init__(self, console: Any, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.bar = None
        if enabled and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), console=console)
        self.run_task = self.epoch_task = None
        self.shown_at = -math.inf

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start_run(self, max_epochs: int, done: int) -> None:
        if self.bar is not None:
            self.run_task = self.bar.add_task("epochs", total=max_epochs, completed=done, info="")

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        if self.bar is None:
            return
        if self.epoch_task is not None:
            self.bar.remove_task(self.epoch_task)
        self.epoch_task = self.bar.add_task(f"epoch {epoch}", total=num_batches, info="")

    def advance(self, loss: torch.Tensor) -> None:
        """One batch done; the shown loss (a read-back from the GPU) is refreshed at most every half second."""
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self.shown_at >= 0.5:
            self.shown_at = now
            self.bar.update(self.epoch_task, advance=1, info=f"loss {float(loss.detach()):.4g}")
        else:
            self.bar.update(self.epoch_task, advance=1)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.3g}", f"train {row['train_loss']:.4g}"]
        if "valid_loss" in row:
            parts.append(f"valid {row['valid_loss']:.4g}")
        if "valid_energy_mae_meV_per_atom" in row:
            parts.append(f"E MAE {row['valid_energy_mae_meV_per_atom']:.3f} meV/atom")
        if "valid_forces_mae_meV_per_A" in row:
            parts.append(f"F MAE {row['valid_forces_mae_meV_per_A']:.2f} meV/Å")
        parts.append(f"{row['time_s']:.1f} s")
        line = "  ".join(parts)
        if self.bar is not None:
            self.bar.update(self.run_task, advance=1, info=f"valid {row.get('valid_loss', float('nan')):.4g}")
            self.bar.console.print(line)
        else:
            self.console.print(line, highlight=False)
