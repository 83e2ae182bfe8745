"""Radial basis and smooth cutoff envelope shared by the potentials.

- :class:`BesselBasis`: the DimeNet / NequIP Bessel basis, b_n(r) = √(2/r_c) · sin(nπ r / r_c) / r, n = 1..num_basis.
  Each function vanishes at r = r_c (but its slope does not: multiply by the envelope for smoothness).
- :class:`PolynomialEnvelope`: the DimeNet polynomial cutoff u(x), x = r / r_c,

      u(x) = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2)   for x < 1,   0 beyond,

  with u(0) = 1 and u, u', u'' all zero at x = 1 (a triple root), so energies built from u-weighted terms have
  continuous forces and continuous force derivatives where a pair crosses the cutoff. It is evaluated in the factored
  form u(x) = (1 − x)³ · Σ_{k<p} (k+1)(k+2)/2 · x^k, which is exact algebra but keeps full *relative* precision as
  x → 1 (the expanded form cancels catastrophically there: in float32 it returns zero or negative values within
  ~1e-2 of the cutoff), so ``log(u)`` and ratios of u stay accurate right up to the cutoff.

Both take distances of any shape (...,) and keep dtype and device of the input; no state is mutated in forward.
Distances must be positive (an edge list never holds r = 0; the basis divides by r).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "PolynomialEnvelope"]


class BesselBasis(nn.Module):
    """Bessel radial basis, b_n(r) = √(2/r_c) · sin(ω_n r) / r with ω_n = nπ / r_c.

    Args:
        num_basis: number of basis functions n = 1..num_basis.
        cutoff: r_c in Å.
        trainable: learn the frequencies ω_n (as in DimeNet / NequIP); otherwise they are a fixed buffer.

    Shapes: ``r`` (...,) → (..., num_basis).
    """

    def __init__(self, num_basis: int = 8, cutoff: float = 5.0, trainable: bool = False) -> None:
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis must be at least 1, got {num_basis}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.num_basis = int(num_basis)
        self.cutoff = float(cutoff)
        self.prefactor = math.sqrt(2.0 / self.cutoff)
        frequencies = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.cutoff
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(r.dtype) * r) / r

    def extra_repr(self) -> str:
        trainable = isinstance(self.frequencies, nn.Parameter)
        return f"num_basis={self.num_basis}, cutoff={self.cutoff}, trainable={trainable}"


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(r / r_c) of DimeNet (p = 6 as in DimeNet and NequIP): 1 at r = 0, 0 with zero first and
    second derivatives at r = r_c, exactly 0 beyond. See the module docstring for the formula.

    Args:
        cutoff: r_c in Å.
        p: polynomial order (≥ 2); larger p keeps u closer to 1 further out and makes the drop steeper.

    Shapes: ``r`` (...,) → (...,).
    """

    def __init__(self, cutoff: float = 5.0, p: int = 6) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if p < 2:
            raise ValueError(f"p must be at least 2, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)
        # u(x) = (1 - x)^3 g(x) with g(x) = sum_{k<p} (k+1)(k+2)/2 x^k: the first p terms of (1 - x)^-3.
        self._coefficients = [(k + 1) * (k + 2) / 2.0 for k in range(self.p)]

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.cutoff
        g = torch.full_like(x, self._coefficients[-1])
        for c in reversed(self._coefficients[:-1]):  # Horner; p terms, not a loop over data
            g = g * x + c
        return torch.relu(1.0 - x) ** 3 * g

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"
