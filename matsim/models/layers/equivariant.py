"""Equivariant attention block on e3nn irreps (the message-passing layer of the BAMBOO-style transformer).

Node features are irreps ``C×0e + C×1o (+ C×2e)``. For each edge i←j the block forms

- an attention weight per head, a_ij^h = SiLU(q_i^h · k_ij^h / √d) · u(r_ij): queries from i's scalars, keys from j's
  scalars modulated by the radial basis; u is the smooth cutoff envelope, so a neighbor fades out continuously at the
  cutoff (no softmax over neighbors, whose normalisation would jump when a neighbor enters);
- a value v_ij = TP(h_j, Y(r̂_ij)) with per-edge weights from an MLP of the radial basis ("uvu" paths, NequIP-style);

then aggregates m_i = Σ_j a_ij ⊙ v_ij / avg_num_neighbors and updates h_i ← h_i + Gate(Linear(m_i)) (a residual
update: with no neighbors m_i = 0 and h_i is unchanged, which keeps an isolated atom at its reference energy).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from matsim.models.layers.mlp import MLP

__all__ = ["EquivariantAttentionBlock", "node_irreps"]


def node_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``channels×0e + channels×1o (+ channels×2e ...)`` up to ``l_max`` (parity of the spherical harmonics)."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


class EquivariantAttentionBlock(nn.Module):
    """One equivariant graph-attention layer (see the module docstring).

    Args:
        irreps: node irreps (input = output), e.g. ``node_irreps(32, 1)``.
        num_radial: size of the radial basis fed in per edge.
        num_heads: attention heads; the channels of every irrep are split evenly between heads.
        radial_hidden: hidden width of the radial MLP producing tensor-product weights and keys.
        avg_num_neighbors: normalisation of the neighbor sum.

    Shapes: ``h`` (N, irreps.dim); ``edge_sh`` (E, sh.dim) spherical harmonics of r̂_ij; ``edge_radial`` (E, num_radial);
    ``envelope`` (E,); ``edge_index`` (2, E) with centre i = row 0, neighbor j = row 1.
    """

    def __init__(self, irreps: o3.Irreps, num_radial: int, num_heads: int, radial_hidden: int,
                 avg_num_neighbors: float) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        channels = self.irreps[0].mul
        if any(mul != channels for mul, _ in self.irreps) or channels % num_heads:
            raise ValueError(f"every irrep needs the same multiplicity divisible by num_heads; got {irreps}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.avg_num_neighbors = float(avg_num_neighbors)
        l_max = max(ir.l for _, ir in self.irreps)
        self.sh_irreps = o3.Irreps.spherical_harmonics(l_max)

        instructions, mid = [], []
        for i, (mul, ir_in) in enumerate(self.irreps):
            for j, (_, ir_sh) in enumerate(self.sh_irreps):
                for ir_out in ir_in * ir_sh:
                    if ir_out in [ir for _, ir in self.irreps]:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        self.mid_irreps = o3.Irreps(mid)
        self.tensor_product = o3.TensorProduct(
            self.irreps, self.sh_irreps, self.mid_irreps, instructions, shared_weights=False, internal_weights=False
        )
        self.radial_mlp = MLP([num_radial, radial_hidden, radial_hidden, self.tensor_product.weight_numel + channels])
        self.query = nn.Linear(channels, channels, bias=False)
        self.key = nn.Linear(channels, channels, bias=False)
        self.register_buffer("head_of_component", self._head_map(self.mid_irreps), persistent=False)

        scalars = o3.Irreps([(m, ir) for m, ir in self.irreps if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in self.irreps if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e")
        self.gate = Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated)
        self.linear_out = o3.Linear(self.mid_irreps, self.gate.irreps_in)

    def _head_map(self, irreps: o3.Irreps) -> torch.Tensor:
        """(irreps.dim,) head of every component: channel u of any irrep belongs to head u // head_dim."""
        heads = []
        for mul, ir in irreps:
            heads.append((torch.arange(mul) // self.head_dim).repeat_interleave(ir.dim))
        return torch.cat(heads)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_sh: torch.Tensor, edge_radial: torch.Tensor,
                envelope: torch.Tensor) -> torch.Tensor:
        centre, neighbor = edge_index
        channels = self.irreps[0].mul
        radial = self.radial_mlp(edge_radial)
        tp_weights, key_modulation = radial[:, :-channels], radial[:, -channels:]
        scalars = h[:, :channels]
        q = self.query(scalars)[centre].view(-1, self.num_heads, self.head_dim)
        k = (self.key(scalars)[neighbor] * key_modulation).view(-1, self.num_heads, self.head_dim)
        attention = nn.functional.silu((q * k).sum(-1) / self.head_dim**0.5) * envelope.unsqueeze(1)  # (E, H)
        values = self.tensor_product(h[neighbor], edge_sh, tp_weights)
        messages = values * attention[:, self.head_of_component]
        aggregated = torch.zeros(h.shape[0], messages.shape[1], dtype=h.dtype, device=h.device)
        aggregated = aggregated.index_add(0, centre, messages) / self.avg_num_neighbors
        return h + self.gate(self.linear_out(aggregated))
