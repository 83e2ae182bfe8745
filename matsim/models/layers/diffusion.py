"""Noise schedules shared by the diffusion models (UniMat, DiffSpectra)."""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_alphas_bar"]


def cosine_alphas_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t (``timesteps``,) float64 of the cosine schedule, t = 0..T-1 (β_t = 1 - ᾱ_t/ᾱ_{t-1} capped at 0.999)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos((x / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)
