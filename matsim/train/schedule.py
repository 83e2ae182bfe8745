"""Learning-rate schedule: linear warm-up, then cosine decay or reduce-on-plateau; a pure function of the step."""

from __future__ import annotations

import math

from matsim.train.config import ScheduleSection


class LRSchedule:
    """Learning rate of each optimiser step: linear warm-up, then cosine decay, reduce-on-plateau or constant.

    The rate is a pure function of the step and (for ``plateau``) of a scale that :meth:`epoch_end` lowers; the
    whole state is three numbers, so resuming is exact.
    """

    def __init__(self, config: ScheduleSection, base_lr: float, steps_per_epoch: int, max_epochs: int) -> None:
        self.config = config
        self.base_lr = float(base_lr)
        self.warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
        self.total_steps = max(int(max_epochs * steps_per_epoch), 1)
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.config.type == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
            ratio = self.config.min_lr_ratio
            factor = ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.config.type == "plateau":
            factor = self.scale
        else:
            factor = 1.0
        return self.base_lr * warmup * factor

    def epoch_end(self, monitored: float, in_warmup: bool) -> None:
        if self.config.type != "plateau" or in_warmup:
            return
        if monitored < self.best:
            self.best, self.bad_epochs = monitored, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.config.patience:
            self.scale *= self.config.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.best, self.bad_epochs = float(state["scale"]), float(state["best"]), int(state["bad_epochs"])
