"""SpecFormer: a transformer encoder of spectra (DiffSpectra, arXiv:2507.06853), and the CLIP-style contrastive loss
that pre-trains it against a structure embedding.

Each spectrum modality (IR now; Raman or UV later) is one token stream: the spectrum on its fixed grid is cut into
1D patches (``patch_size`` points every ``patch_stride`` points; overlapping when the stride is smaller), each patch
is projected linearly to ``dim`` and gets a learned position embedding (its place on the grid) and its modality's
embedding. The streams of all modalities and one learned ``[CLS]`` token form one sequence, a pre-norm
``nn.TransformerEncoder`` mixes them, and the final ``[CLS]`` state, layer-normalised, is the spectrum embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpecFormer", "info_nce"]


class SpecFormer(nn.Module):
    """Spectra (B, M, G) → embeddings (B, dim).

    Args:
        grid_points: G, points of each spectrum (3501 for IR on 500-4000 cm⁻¹ every 1 cm⁻¹), one per modality.
        modalities: M, spectrum types in a fixed order (row m of the input is modality m).
        dim: token and embedding width.
        patch_size: points per patch.
        patch_stride: points between patch starts (default ``patch_size``: no overlap).
        layers: transformer encoder layers.
        heads: attention heads (divide ``dim``).
        dropout: dropout inside the encoder.
    """

    def __init__(self, grid_points: Sequence[int] | int, modalities: int = 1, dim: int = 128, patch_size: int = 50,
                 patch_stride: int | None = None, layers: int = 4, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        points = [grid_points] * modalities if isinstance(grid_points, int) else list(grid_points)
        if len(points) != modalities:
            raise ValueError(f"grid_points gives {len(points)} grids for {modalities} modalities")
        self.patch_size, self.patch_stride = patch_size, patch_stride or patch_size
        self.patches = [(g - patch_size) // self.patch_stride + 1 for g in points]
        if min(self.patches) < 1:
            raise ValueError(f"patch_size {patch_size} is longer than a spectrum of {min(points)} points")
        self.grid_points = points
        self.embed = nn.ModuleList(nn.Linear(patch_size, dim) for _ in points)
        self.position = nn.ParameterList(nn.Parameter(torch.randn(p, dim) * 0.02) for p in self.patches)
        self.modality = nn.Parameter(torch.randn(modalities, dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def tokens(self, spectra: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, Σ patches, dim) of the modalities' spectra (each (B, G_m))."""
        streams = []
        for m, spectrum in enumerate(spectra.unbind(1) if torch.is_tensor(spectra) else spectra):
            if spectrum.shape[-1] != self.grid_points[m]:
                raise ValueError(f"modality {m}: spectra of {spectrum.shape[-1]} points, the model takes "
                                 f"{self.grid_points[m]}")
            patches = spectrum.unfold(-1, self.patch_size, self.patch_stride)  # (B, P, patch)
            streams.append(self.embed[m](patches) + self.position[m] + self.modality[m])
        return torch.cat(streams, dim=1)

    def forward(self, spectra: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Embeddings (B, dim) of spectra: a (B, M, G) tensor or M tensors (B, G_m) on grids of different lengths."""
        tokens = self.tokens(spectra)
        cls = self.cls.expand(tokens.shape[0], 1, -1)
        return self.norm(self.encoder(torch.cat([cls, tokens], dim=1))[:, 0])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss of paired embeddings a (B, D) and b (B, D): row i of each is a positive pair,
    the other rows of the batch its negatives; cosine similarities divided by ``temperature``. Scalar, ≥ 0."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
