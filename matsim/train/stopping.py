"""Early stopping on a monitored validation loss, shared by the potentials' and the generative training loops."""

from __future__ import annotations

import math

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """The best monitored loss so far, the epoch it came from, and the validations since without a better one.

    Args:
        patience: validations without improvement after which :meth:`update` says stop (None: never).
    """

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, monitored: float, epoch: int) -> tuple[bool, bool]:
        """Record the loss ``monitored`` of ``epoch``; returns (improved, stop)."""
        improved = monitored < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = monitored, epoch, 0
        else:
            self.bad_epochs += 1
        return improved, self.patience is not None and self.bad_epochs >= self.patience

    def message(self) -> str:
        return f"early stopping: no better validation loss for {self.bad_epochs} epochs (best at epoch {self.best_epoch})"

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = float(state["best"]), int(state["best_epoch"]), int(state["bad_epochs"])
