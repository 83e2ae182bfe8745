"""Exponential moving average of a model's weights, used for validation and for the checkpoints a run saves.

The average is a full copy of the model (``ema.module``), updated in place after every optimiser step:

    θ_ema ← d θ_ema + (1 - d) θ,   d = min(decay, (1 + t) / (10 + t))

(the warm-up of d, as in TensorFlow's ``ExponentialMovingAverage`` and MACE, keeps early averages from being
dominated by the random initial weights). Buffers are copied as they are. ``state_dict`` holds only tensors and an
int, so it round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """EMA of the parameters of ``model`` (see the module docstring); ``decay=None`` or 0 tracks the model exactly."""

    def __init__(self, model: nn.Module, decay: float | None = 0.99) -> None:
        self.decay = float(decay or 0.0)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        t = self.num_updates
        decay = min(self.decay, (1.0 + t) / (10.0 + t))
        for averaged, current in zip(self.module.parameters(), model.parameters()):
            if decay == 0.0:
                averaged.copy_(current.detach())  # no averaging: the exact weights
            else:
                averaged.lerp_(current.detach(), 1.0 - decay)
        for averaged, current in zip(self.module.buffers(), model.buffers()):
            averaged.copy_(current)

    def state_dict(self) -> dict:
        return {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "num_updates": int(self.num_updates), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
