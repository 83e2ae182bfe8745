"""Exponential moving average of a model's weights, used for validation and for the checkpoints a run saves.

The average is a full copy of the model (``ema.module``), updated in place after every optimiser step:

    θ_ema ← d θ_ema + (1 - d) θ,   d = min(decay, (1 + t) / (10 + t))

(the warm-up of d, as in TensorFlow's ``ExponentialMovingAverage`` and MACE, keeps early averages from being
dominated by the random initial weights). Buffers are copied as they are. The update is two ``torch._foreach`` calls
(one lerp over all parameters, one copy over all buffers) instead of a Python loop of one kernel per tensor; the
arithmetic per element is that of ``lerp_``. ``state_dict`` holds only tensors and an
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
        self._params: tuple[nn.Module, list, list] | None = None

    def _param_pairs(self, model: nn.Module) -> tuple[list, list]:
        """(averaged, current) parameters, listed once per model (Parameter objects persist through ``.to()``;
        buffers do not, so those are listed at every update)."""
        if self._params is None or self._params[0] is not model:
            self._params = (model, list(self.module.parameters()), list(model.parameters()))
        return self._params[1], self._params[2]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        t = self.num_updates
        decay = min(self.decay, (1.0 + t) / (10.0 + t))
        averaged, current = self._param_pairs(model)
        if decay == 0.0:
            torch._foreach_copy_(averaged, current)  # no averaging: the exact weights
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        averaged_buffers = list(self.module.buffers())
        if averaged_buffers:
            torch._foreach_copy_(averaged_buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "num_updates": int(self.num_updates), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
