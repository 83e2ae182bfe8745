"""UniMat: diffusion over the unified periodic-table representation of crystals (Yang et al., "Scalable Diffusion
for Materials Generation", ICLR 2024). Our own implementation of the paper's idea, small enough for one GPU.

- **Data** (:mod:`matsim.datasets.unimat`): a crystal is a (9, 18, L) grid of slots (period × group × atom of that
  element), each with an occupancy and fractional coordinates, plus its lattice parameters. The model works on
  7 channels per slot: occupancy ±1 and each fractional coordinate f as the point (cos 2πf, sin 2πf) on the unit
  circle ((0, 0) in empty slots), and on 6 lattice numbers: (log a, log b, log c, α, β, γ) standardised with
  training statistics. Optionally (``random_shift``) training shifts each crystal's origin by a uniform random
  fraction, then re-sorts each element's atoms into canonical order; coordinates within 10⁻³ of 1 count as 0
  for that order (:func:`~matsim.datasets.unimat.to_grid`'s ``wrap_tolerance``).
- **Why the circle, not UniMat's raw coordinates.** A site on a cell face is stored as 0 in one crystal and as
  0.9999 in the next (perov_5: 7 % of all fractional coordinates are above 0.99, 28 % below 0.01). As plain numbers
  2f - 1 these are -1 and +1, the two ends of the interval, and a denoiser trained with an MSE predicts their
  mean, 0, i.e. the cell's middle: our first UniMat (raw coordinates) put perov_5 atoms between the sites
  (COV-P ≤ 0.007). On the circle 0 and 0.9999 are the same point.
- **Noise process**: DDPM (Ho et al. 2020) with the cosine schedule (Nichol & Dhariwal 2021, s = 0.008, ᾱ_t
  clipped so β_t ≤ 0.999) over ``timesteps`` steps and noise (ε) prediction, applied jointly to the grid and the
  lattice. Loss: the MSE of the occupancy channel over all slots, of the coordinate channels over the occupied
  slots only (≈ 1 % of the grid: an MSE over all slots would be almost all empty-slot zeros), and of the lattice.
  The coordinates the network predicts are therefore those of an occupied slot; in sampling, a slot's x0 estimate
  of its coordinates is their mean with the empty marker (0, 0), weighted by the slot's probability of being
  occupied: 1 or 0 when a composition fixes the occupancy, (x̂0_occupancy + 1) / 2 otherwise. Unconditional
  chains still end with the wrong number of occupied slots more often than not (perov_5, 250 GPU epochs: 28 % of
  DDIM-50 samples have the data's 5 atoms with self-conditioning, 13 % without): the occupancy channel is the
  open problem; composition-conditioned sampling does not depend on it.
- **Network** (:class:`UNet3d`): a 3D U-Net over the (period, group, slot) grid: residual conv blocks (GroupNorm,
  SiLU, 3×3×3 convolutions) whose biases come from the embedding of the time step plus the noisy lattice,
  stride-2 downsampling per level (``channel_mults``), self-attention at the coarsest level over the flattened grid
  together with one global token, skip connections up. Learned embeddings of the grid cell and of the slot tell
  the convolutions which element and slot they look at. The global token's output predicts the lattice noise.
- **Self-conditioning** (opt-in ``self_condition``; Chen, Zhang & Hinton, "Analog Bits", ICLR 2023): the network
  also sees its own previous x0 estimate of the grid (7 more input channels, zeros when there is none). In
  training, half of the batches' crystals get the estimate of a first, gradient-free pass at the same noise; in
  sampling, each step gets the previous step's (clipped, occupancy-weighted) estimate. Meant for the occupancy
  channel, whose per-step estimates otherwise start again from the noise alone.
- **Composition conditioning with classifier-free guidance** (Ho & Salimans 2022): the network gets the clean
  occupancy as an extra input channel, dropped (zeros) with probability ``condition_dropout`` in training. A
  composition fixes the occupancy (an element with k atoms fills its first k slots), so conditional sampling
  masks it: at each step the occupancy channel is replaced by the composition's occupancy noised to that step's
  level, the model denoises coordinates and lattice, and the decoded crystal takes the composition's occupancy, so
  it has exactly the requested composition. Guidance ``w``: ε = ε_uncond + w·(ε_cond - ε_uncond) (w = 1: plain
  conditional model, one network call per step).
- **Sampler** (:class:`UniMatSampler`): DDIM (Song et al. 2021) on an evenly spaced subsequence of ``steps`` time
  steps with stochasticity ``eta``; ``steps = timesteps`` with ``eta = 1`` is DDPM's ancestral sampler (the
  default), ``eta = 0`` with a few tens of steps is the few-step deterministic sampler. x0 estimates are clipped
  (grid to [-1, 1], standardised lattice to ±5). Decoding: occupancy > 0 (only in cells of the training
  ``species``), each coordinate the angle of its circle point (atan2, in [0, 1)); a sample with no atom or an
  invalid lattice is ``None``.

Units: Å, degrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from pymatgen.core import Element, Structure
from torch import nn

from matsim.core.config import StrictModel, validate_config
from matsim.core.errors import ConfigError
from matsim.datasets.crystals import CrystalBatch, CrystalDataset
from matsim.datasets.unimat import (
    COLUMNS,
    ROWS,
    UniMatGrid,
    cell_elements,
    composition_occupancy,
    grid_to_structures,
    max_atoms_per_element,
    to_grid,
)
from matsim.models import MODELS
from matsim.models.base import sorted_species
from matsim.models.generative import GenerativeModel, composition_counts
from matsim.models.layers.diffusion import cosine_alphas_bar
from matsim.models.layers.mlp import MLP

__all__ = ["UniMat", "UniMatSampler", "UNet3d"]

#: Guards on decoded lattices (Å, degrees).
MIN_LENGTH, MIN_ANGLE, MAX_ANGLE = 1.0, 20.0, 160.0
GRID_CHANNELS = 7  # occupancy, (cos 2πf, sin 2πf) of x, y, z
#: Fractional coordinates this close to 1 are stored as 0 (the same site) before the canonical sort.
WRAP_TOLERANCE = 1e-3
#: Bound of the standardised lattice's x0 estimates when ``clip_denoised`` (training-set standard deviations).
LATTICE_CLIP = 5.0


class UniMatSampler(StrictModel):
    """Settings of UniMat's DDIM / DDPM sampler.

    ``steps``: network evaluations (time steps of an even subsequence; default all ``timesteps``). ``eta``: 1 gives
    DDPM's ancestral noise, 0 deterministic DDIM (use with few steps, e.g. 50). ``guidance``: classifier-free
    guidance weight of a composition condition (1: conditional model only; > 1 strengthens the condition and costs
    two network calls per step). ``clip_denoised``: clip the grid's x0 estimates to [-1, 1] and the standardised
    lattice's to ±5 (early estimates at ᾱ_t ≈ 0 are otherwise unbounded).
    """

    steps: int | None = Field(None, ge=1)
    eta: float = Field(1.0, ge=0, le=1)
    guidance: float = Field(1.0, ge=0)
    clip_denoised: bool = True


# --- network -----------------------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with the embedding added in between; (B, C_in, ...) → (B, C_out, ...)."""

    def __init__(self, channels_in: int, channels_out: int, embedding: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels_in), nn.Conv3d(channels_in, channels_out, 3, padding=1)
        self.emb = nn.Linear(embedding, channels_out)
        self.norm2, self.conv2 = _norm(channels_out), nn.Conv3d(channels_out, channels_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None, None]
        return self.skip(h) + self.conv2(F.silu(self.norm2(out)))


class _Attention(nn.Module):
    """Multi-head self-attention over the flattened grid plus a global token: (B, C, ...), (B, C) → same shapes."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads ({heads}) must divide the coarsest width ({channels})")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, *shape = h.shape
        x = torch.cat([token.unsqueeze(1), h.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + N, C)
        q, k, v = self.qkv(self.norm(x)).reshape(b, x.shape[1], 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], c)
        x = x + self.out(attended)
        return x[:, 1:].transpose(1, 2).reshape(b, c, *shape), x[:, 0]


class UNet3d(nn.Module):
    """The ε-network (see the module docstring).

    Inputs: noisy grid (B, 7, 9, 18, L), condition occupancy (B, 1, 9, 18, L) (±1, or 0 when unconditioned), noisy
    standardised lattice (B, 6), integer time steps (B,) and, when built with ``self_condition``, the previous x0
    estimate of the grid (B, 7, 9, 18, L) (None: zeros). Outputs: ε of the grid (B, 7, 9, 18, L) and of the
    lattice (B, 6).
    """

    def __init__(self, slots: int, channels: int = 64, channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attention_heads: int = 4, self_condition: bool = False) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mults]
        embedding = 4 * channels
        self.channels = channels
        self.self_condition = self_condition
        self.time_mlp = MLP([channels, embedding, embedding])
        self.lattice_mlp = MLP([6, embedding, embedding])
        inputs = GRID_CHANNELS + 1 + (GRID_CHANNELS if self_condition else 0)
        self.conv_in = nn.Conv3d(inputs, channels, 3, padding=1)
        self.cell_embedding = nn.Parameter(torch.randn(1, channels, ROWS, COLUMNS, 1) * 0.02)
        self.slot_embedding = nn.Parameter(torch.randn(1, channels, 1, 1, slots) * 0.02)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        width = channels
        for level, out in enumerate(widths):
            self.down.append(nn.ModuleList(_ResBlock(width if i == 0 else out, out, embedding)
                                           for i in range(num_res_blocks)))
            width = out
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv3d(width, width, 3, stride=2, padding=1))
        self.mid1 = _ResBlock(width, width, embedding)
        self.token = nn.Linear(embedding, width)
        self.attention = _Attention(width, attention_heads)
        self.mid2 = _ResBlock(width, width, embedding)
        self.lattice_out = MLP([width, width, 6])
        nn.init.zeros_(self.lattice_out[-1].weight)
        nn.init.zeros_(self.lattice_out[-1].bias)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            out = widths[level]
            if level < len(widths) - 1:
                self.upsample.append(nn.Conv3d(width, out, 3, padding=1))
            self.up.append(nn.ModuleList(_ResBlock(2 * out if i == 0 else out, out, embedding)
                                         for i in range(num_res_blocks)))
            width = out
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv3d(width, GRID_CHANNELS, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features (B, channels) of integer time steps (B,)."""
        half = self.channels // 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float().unsqueeze(1) * frequencies.unsqueeze(0)
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        return F.pad(features, (0, self.channels - 2 * half))

    def forward(self, grid: torch.Tensor, condition: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor,
                previous_x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.time_mlp(self.time_features(t).to(grid.dtype)) + self.lattice_mlp(lattice)
        inputs = [grid, condition]
        if self.self_condition:
            inputs.append(torch.zeros_like(grid) if previous_x0 is None else previous_x0)
        h = self.conv_in(torch.cat(inputs, dim=1)) + self.cell_embedding + self.slot_embedding
        skips = []
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid1(h, emb)
        h, token = self.attention(h, self.token(emb))
        h = self.mid2(h, emb)
        for level, blocks in enumerate(self.up):
            skip = skips.pop()
            if level > 0:
                h = self.upsample[level - 1](F.interpolate(h, size=skip.shape[2:], mode="nearest"))
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h))), self.lattice_out(token)


# --- the model ---------------------------------------------------------------------------------------------------
@MODELS.register("unimat")
class UniMat(GenerativeModel):
    """UniMat diffusion model (see the module docstring).

    Args:
        species: atomic numbers the model may place (filled from the training data); other cells stay empty.
        slots: L, atoms per element the grid holds (filled from the training data: the most of one element).
        lattice_mean, lattice_std: statistics of (log a, log b, log c) (a in Å) and (α, β, γ) in degrees, (6,) each.
        channels, channel_mults, num_res_blocks, attention_heads: U-Net width, width multipliers per resolution
            level, residual blocks per level, heads of the attention at the coarsest level.
        timesteps: diffusion steps T.
        condition_dropout: probability that a training crystal is seen without its composition (CFG).
        random_shift: random origin shift of each training crystal (augmentation).
        self_condition: feed the network its previous x0 estimate of the grid (Analog Bits' self-conditioning).
    """

    sampler_settings = UniMatSampler
    condition_keys = ("composition",)

    def __init__(
        self,
        species: Sequence[int] = tuple(range(1, 101)),
        slots: int = 4,
        lattice_mean: Sequence[float] = (1.5, 1.5, 1.5, 90.0, 90.0, 90.0),
        lattice_std: Sequence[float] = (0.3, 0.3, 0.3, 10.0, 10.0, 10.0),
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_heads: int = 4,
        timesteps: int = 1000,
        condition_dropout: float = 0.2,
        random_shift: bool = True,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        species = sorted_species(species)
        if len(lattice_mean) != 6 or len(lattice_std) != 6:
            raise ValueError("lattice_mean and lattice_std need 6 numbers: log a, log b, log c and alpha, beta, gamma")
        if slots < 1 or timesteps < 2 or not 0.0 <= condition_dropout <= 1.0:
            raise ValueError("slots ≥ 1, timesteps ≥ 2 and 0 ≤ condition_dropout ≤ 1 are required")
        self.species_list = species
        self.slots = int(slots)
        self.timesteps = int(timesteps)
        self.condition_dropout = float(condition_dropout)
        self.random_shift = bool(random_shift)
        self.self_condition = bool(self_condition)
        allowed = torch.isin(cell_elements(), torch.tensor(species)).reshape(1, ROWS, COLUMNS, 1)
        self.register_buffer("allowed_cells", allowed, persistent=False)
        self.register_buffer("lattice_mean", torch.tensor(lattice_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("lattice_std", torch.tensor(lattice_std, dtype=torch.float32), persistent=False)
        self.register_buffer("alphas_bar", cosine_alphas_bar(self.timesteps).float(), persistent=False)
        self.network = UNet3d(self.slots, channels, channel_mults, num_res_blocks, attention_heads,
                              self.self_condition)

    # --- data ----------------------------------------------------------------------------------------------------
    @classmethod
    def data_hyperparameters(cls, train: CrystalDataset, valid: CrystalDataset | None = None) -> dict[str, Any]:
        """Species and slots of train + valid; statistics of (log lengths, angles) of train."""
        sets = [train] + ([valid] if valid is not None and len(valid) else [])
        params = train.lattice_parameters()
        params[:, :3] = params[:, :3].log()
        std = params.std(dim=0).clamp_min(1e-3) if len(train) > 1 else torch.ones(6, dtype=torch.float64)
        return {
            "species": sorted(set().union(*(d.species() for d in sets))),
            "slots": max(max_atoms_per_element(d) for d in sets),
            "lattice_mean": [float(x) for x in params.mean(dim=0)],
            "lattice_std": [float(x) for x in std],
        }

    def encode(self, grid: UniMatGrid) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space tensors of a grid batch: (B, 7, 9, 18, L) (occupancy ±1, then cos 2πf of x, y, z and
        sin 2πf of x, y, z; (0, 0) in empty slots) and the standardised lattice (B, 6)."""
        occupancy = grid.occupancy.unsqueeze(-1)
        angle = 2.0 * math.pi * grid.frac_coords
        circle = torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1) * occupancy
        x = torch.cat([occupancy.to(circle.dtype) * 2.0 - 1.0, circle], dim=-1).permute(0, 4, 1, 2, 3)
        lattice = torch.cat([grid.lengths.log(), grid.angles], dim=1)
        return x.contiguous(), (lattice - self.lattice_mean) / self.lattice_std

    def decode(self, x: torch.Tensor, lattice: torch.Tensor, occupancy: torch.Tensor | None = None) -> UniMatGrid:
        """A grid batch from model-space tensors (see :meth:`encode`); ``occupancy`` (B, 9, 18, L) bool overrides
        the occupancy channel. Lattices are clamped to lengths ≥ 1 Å and angles in [20°, 160°]."""
        if occupancy is None:
            occupancy = (x[:, 0] > 0) & self.allowed_cells
        circle = x[:, 1:].permute(0, 2, 3, 4, 1)
        frac = torch.remainder(torch.atan2(circle[..., 3:], circle[..., :3]) / (2.0 * math.pi), 1.0)
        params = lattice * self.lattice_std + self.lattice_mean
        lengths = params[:, :3].clamp(max=math.log(1e3)).exp().clamp_min(MIN_LENGTH)
        return UniMatGrid(frac_coords=frac, occupancy=occupancy, lengths=lengths,
                          angles=params[:, 3:].clamp(MIN_ANGLE, MAX_ANGLE))

    # --- training ------------------------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """ε-prediction MSE of the occupancy (all slots), coordinate (occupied slots) and lattice channels;
        ``"loss"`` is their sum."""
        num = batch.num_systems
        device = batch.frac_coords.device
        shift = torch.rand(num, 3, device=device, dtype=batch.frac_coords.dtype) if self.random_shift else None
        grid = to_grid(batch, self.slots, shift, wrap_tolerance=WRAP_TOLERANCE)
        x0, lattice0 = self.encode(grid)
        t = torch.randint(0, self.timesteps, (num,), device=device)
        keep = (torch.rand(num, device=device) >= self.condition_dropout).to(x0.dtype)
        condition = x0[:, :1] * keep.reshape(-1, 1, 1, 1, 1)
        noise, lattice_noise = torch.randn_like(x0), torch.randn_like(lattice0)
        ab = self.alphas_bar[t]
        x_t = _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * noise
        lattice_t = ab.sqrt().unsqueeze(1) * lattice0 + (1 - ab).sqrt().unsqueeze(1) * lattice_noise
        previous = None
        if self.self_condition:  # half of the crystals see a first pass's estimate, as sampling will
            with torch.no_grad():
                eps, _ = self.network(x_t, condition, lattice_t, t)
                estimate = _denoised(x_t, eps, _bcast(ab, x0))
                occupied = torch.where(_bcast(keep > 0, x0), grid.occupancy.unsqueeze(1).to(x0.dtype),
                                       _occupied_probability(estimate))
                use = (torch.rand(num, device=device) < 0.5).to(x0.dtype)
                previous = _weighted_x0(estimate, occupied) * _bcast(use, x0)
        predicted, predicted_lattice = self.network(x_t, condition, lattice_t, t, previous)
        terms = {
            "occupancy": F.mse_loss(predicted[:, :1], noise[:, :1]),
            "coord": _masked_mse(predicted[:, 1:], noise[:, 1:], grid.occupancy.unsqueeze(1)),
            "lattice": F.mse_loss(predicted_lattice, lattice_noise),
        }
        total = terms["occupancy"] + terms["coord"] + terms["lattice"]
        return {"loss": total, **{name: value.detach() for name, value in terms.items()}}

    # --- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, condition: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> list[Structure | None]:
        """``n`` crystals (see the module docstring); ``condition``: ``{"composition": "SrTiO3"}`` for every sample or
        ``{"composition": [formula of sample 0, ..., of sample n-1]}`` (optional; cell formulas with their atom
        counts, e.g. ``"Sr2 Ti2 O6"``); ``settings``: :class:`UniMatSampler` keys; ``generator`` (on the model's
        device) makes it reproducible."""
        options = validate_config(UniMatSampler, dict(settings), source="sampler settings")
        self.check_condition(condition)
        device, dtype = self.alphas_bar.device, self.network.conv_in.weight.dtype
        fixed = None
        if condition and "composition" in condition:
            fixed = self._condition_occupancy(condition["composition"], n).to(device)
        cond = (fixed.to(dtype) * 2.0 - 1.0).unsqueeze(1) if fixed is not None else None

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

        x = randn(n, GRID_CHANNELS, ROWS, COLUMNS, self.slots)
        lattice = randn(n, 6)
        steps = torch.linspace(self.timesteps - 1, 0, options.steps or self.timesteps, dtype=torch.float64)
        schedule = torch.unique_consecutive(steps.round().long()).tolist()
        x0 = None
        for i, t in enumerate(schedule):
            ab = float(self.alphas_bar[t])
            ab_prev = float(self.alphas_bar[schedule[i + 1]]) if i + 1 < len(schedule) else 1.0
            if cond is not None:  # the composition masks the occupancy channel, noised to this level
                x[:, :1] = math.sqrt(ab) * cond + math.sqrt(1 - ab) * randn(n, 1, ROWS, COLUMNS, self.slots)
            eps, eps_lattice = self._guided_noise(x, cond, lattice, t, options.guidance, x0)
            x0 = _denoised(x, eps, ab, clip=options.clip_denoised)
            occupied = fixed.unsqueeze(1).to(dtype) if fixed is not None else _occupied_probability(x0)
            x0 = _weighted_x0(x0, occupied)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            lattice0 = (lattice - math.sqrt(1 - ab) * eps_lattice) / math.sqrt(ab)
            if options.clip_denoised:
                lattice0 = lattice0.clamp(-LATTICE_CLIP, LATTICE_CLIP)
                eps_lattice = (lattice - math.sqrt(ab) * lattice0) / math.sqrt(1 - ab)
            sigma = options.eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
            x = math.sqrt(ab_prev) * x0 + direction * eps
            lattice = math.sqrt(ab_prev) * lattice0 + direction * eps_lattice
            if sigma > 0:
                x = x + sigma * randn(*x.shape)
                lattice = lattice + sigma * randn(*lattice.shape)
        return grid_to_structures(self.decode(x, lattice, fixed))

    def _guided_noise(self, x: torch.Tensor, cond: torch.Tensor | None, lattice: torch.Tensor, t: int,
                      guidance: float, previous_x0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """ε of grid and lattice at time step ``t``, classifier-free guided when a condition is given;
        ``previous_x0``: the last step's grid estimate (self-conditioning; None at the first step)."""
        steps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        null = torch.zeros_like(x[:, :1])
        if cond is None:
            return self.network(x, null, lattice, steps, previous_x0)
        if guidance == 1.0:
            return self.network(x, cond, lattice, steps, previous_x0)
        both = None if previous_x0 is None else torch.cat([previous_x0, previous_x0])
        eps, eps_lattice = self.network(torch.cat([x, x]), torch.cat([cond, null]), torch.cat([lattice, lattice]),
                                        torch.cat([steps, steps]), both)
        (c, u), (cl, ul) = eps.chunk(2), eps_lattice.chunk(2)
        return u + guidance * (c - u), ul + guidance * (cl - ul)

    def check_condition(self, condition: Mapping[str, Any] | None) -> None:
        """Unknown keys, an unreadable formula, fractional counts, elements outside ``species`` and more atoms of
        an element than ``slots`` are :class:`ConfigError`."""
        super().check_condition(condition)
        if condition and "composition" in condition:
            for formula in _formulas(condition["composition"]):
                self._composition_counts(formula)

    def _condition_occupancy(self, composition: Any, n: int) -> torch.Tensor:
        """(n, 9, 18, slots) bool occupancy of ``condition["composition"]``: one formula for every sample, or a
        sequence of ``n`` formulas (sample i takes entry i)."""
        if _is_formula_list(composition):
            if len(composition) != n:
                raise ConfigError(f"condition.composition: {len(composition)} formulas for {n} samples")
            occupancy = {f: composition_occupancy(self._composition_counts(f), self.slots)
                         for f in _formulas(composition)}
            return torch.stack([occupancy[f] for f in composition])
        single = composition_occupancy(self._composition_counts(composition), self.slots)
        return single.unsqueeze(0).expand(n, -1, -1, -1)

    def _composition_counts(self, formula: Any) -> dict[int, int]:
        """``{atomic number: atoms}`` of a formula, checked against the model (see :meth:`check_condition`)."""
        counts = composition_counts(formula, self.species_list)
        too_many = {z: c for z, c in counts.items() if c > self.slots}
        if too_many:
            z, c = next(iter(too_many.items()))
            raise ConfigError(f"condition.composition: {c} {Element.from_Z(z).symbol} atoms do not fit the model's "
                              f"{self.slots} slots per element")
        return counts


def _is_formula_list(composition: Any) -> bool:
    return isinstance(composition, Sequence) and not isinstance(composition, str)


def _formulas(composition: Any) -> list[Any]:
    """The distinct formulas of a composition condition (one formula, or one per sample), in order."""
    return list(dict.fromkeys(composition)) if _is_formula_list(composition) else [composition]


def _denoised(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float, clip: bool = True) -> torch.Tensor:
    """x0 estimate of a noisy grid from its predicted noise, clipped to [-1, 1] if ``clip``; ``alpha_bar``
    broadcasts against ``x``."""
    x0 = (x - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar ** 0.5
    return x0.clamp(-1.0, 1.0) if clip else x0


def _occupied_probability(x0: torch.Tensor) -> torch.Tensor:
    """(B, 1, 9, 18, L) probability in [0, 1] that a slot is occupied, from the occupancy channel of an x0 estimate."""
    return ((x0[:, :1] + 1.0) / 2.0).clamp(0.0, 1.0)


def _weighted_x0(x0: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
    """The grid's x0 estimate with each slot's coordinates weighted by its probability of being occupied
    (``occupied``, (B, 1, 9, 18, L)): the network's coordinates are those of an occupied slot (the loss sees no
    other), so the estimate is their mean with the empty marker (0, 0)."""
    return torch.cat([x0[:, :1], x0[:, 1:] * occupied], dim=1)


def _masked_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` (broadcast against ``predicted``) is true; 0 if none."""
    weight = mask.to(predicted.dtype).expand_as(predicted)
    return ((predicted - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, ..., 1) broadcastable against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))
