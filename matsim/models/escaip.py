"""EScAIP-style neighbor-attention potential ("escaip").

After EScAIP (Qu & Krishnapriyan, "The Importance of Being Scalable", NeurIPS 2024, arXiv:2410.24169): instead of
equivariant tensor products, every atom's neighborhood is a short *sequence of neighbor tokens* padded to a common
length, and plain multi-head self-attention (``F.scaled_dot_product_attention``: flash / memory-efficient kernels on
GPU) runs over each sequence. All inputs are rotation invariant, so the energy is invariant by construction and the
forces, -dE/dr from :class:`~matsim.models.forcefield.ForceField`, are equivariant. This is our own implementation
of the idea, written against matsim's Potential interface; it is not a port of the reference code.

Per edge i→j (centre i, neighbor j, r_ij < cutoff; u = smooth polynomial envelope, 1 → 0 at the cutoff):

1. **Inputs.** Species embeddings of i and j; a Bessel basis of r_ij; and *bond-orientational* features: an angular
   density per atom A_i[k, lm] = Σ_j φ_k(r_ij) u(r_ij) Y_lm(r̂_ij) / n̄ (k = a few learned radial channels, l ≤
   ``l_max_angular``), contracted with the edge's own harmonics, g_ij[k, l] = Σ_m Y_lm(r̂_ij) A_i[k, lm]
   = (2l+1) Σ_j' φ_k(r_ij') u(r_ij') P_l(cos θ_j'ij) / n̄. These are three-body, rotation-invariant and smooth
   (Σ_m |A_i[k, lm]|² are radially resolved Steinhardt q_l²; the per-edge form also says *where* j sits in the shell).
2. **Padding.** Edges are sorted by (centre, distance) with two stable sorts and scattered (one ``index_copy``)
   into a (N, 1 + slots, hidden) tensor (slots = ``max_neighbors``, or the batch's largest neighborhood unless
   ``static_padding``) with a boolean mask. Slot 0 of every sequence is a *centre token* built from the atom's
   own state: an attention sink that is always present, so softmax rows are never empty (an isolated atom still has
   a well-defined attention) and the softmax denominator is bounded away from zero when all neighbors are far.
3. **Layers** (``num_layers``, pre-norm transformer blocks on the tokens):
   message passing — every token receives the current state of its neighbor atom h_j and its centre h_i;
   *envelope-weighted* self-attention over the sequence (below); a feed-forward block; then the node update
   h_i ← h_i + MLP₀(Σ_j u(r_ij) t_ij / n̄) with a bias-free MLP₀.

   Envelope-weighted attention: query k attends to key j with weight a_kj ∝ w_j · exp(q_k·k_j / √d), where
   w_j = u(r_ij) · 2σ(b_head(r_ij)) (a learned per-head radial gate; w = 1 for the centre token, 0 for padding).
   This equals softmax attention with the additive key bias log w_j, but is computed without a float bias: the
   values carry the weight, v'_j = [w_j v_j, w_j], one ``scaled_dot_product_attention`` call returns
   [Σ_j p_kj w_j v_j, Σ_j p_kj w_j] (p = plain softmax over the non-padded keys), and the first part is divided by
   the second. The attention mask is then a boolean padding mask that needs no gradient, so PyTorch runs its fused
   kernels (flash on CPU, memory-efficient on CUDA) instead of the math fallback that a differentiable float bias
   (needed for forces: the bias depends on r_ij) forces on it — 3x faster on CPU, and no (L × L) bias in memory.
4. **Readout.** e_i = scale · [MLP(h_i) - MLP(h_i⁰)] + shift + E0(Z_i), h_i⁰ the species embedding.

Smoothness at the cutoff (checked by the conformance suite's dimer and, with other neighbors present, by
tests/test_escaip.py): a neighbor j reaches the rest of the model only through
(a) the attention weight of its key, ∝ u(r_ij) · exp(q·k), (b) the node update, weighted by u(r_ij), and (c) the
angular densities, weighted by u(r_ij). u and its first two derivatives vanish at the cutoff, so each contribution —
and its gradient — goes continuously to exactly zero as r_ij → r_c. (Multiplying the values by u alone would not be
enough: the softmax denominator would still jump when a token appears; here u weights numerator and denominator.)
The centre token (w = 1) keeps the denominator ≥ its own softmax share, so it never becomes a ratio of vanishing
numbers when all neighbors are near the cutoff.

Kernels and training: PyTorch's fused attention kernels are not twice differentiable, and a force loss needs
∂²E/∂r∂θ. In ``train()`` mode the attention therefore runs on the math kernel (twice differentiable); in ``eval()``
mode (MD, inference) on the fused kernels. Results agree to rounding.

Isolated atom = E0 exactly: with no neighbors all aggregates are exact zeros, the bias-free node update adds exact
zeros, h_i equals h_i⁰ bit for bit and MLP(h_i) - MLP(h_i⁰) = 0.

Truncation: a neighborhood with more than ``max_neighbors`` atoms within the cutoff cannot fit the sequence. Keeping
only the nearest would make the energy *discontinuous* whenever the neighbor ranked ``max_neighbors`` changes
(that atom may sit well inside the cutoff, where u is not small), which heats MD. Hence ``neighbor_overflow="error"``
by default (a clear :class:`~matsim.core.errors.StructureError`); ``"warn"`` / ``"truncate"`` keep the nearest ones
(for screening or for training on data you know fits). Choose ``max_neighbors`` above the densest environment of
your data: ~4/3·π·r_c³·ρ (ρ ≈ 0.1 atoms/Å³ in organic liquids: ~52 at 5 Å) plus a margin.

Direct forces (``direct_forces=True``, non-conservative): a head predicts F_i = Σ_j w_ij r̂_ij with invariant
w_ij = u(r_ij) · MLP(t_ij) from the final tokens (equivariant by construction, smooth at the cutoff). It is *not*
the derivative of the energy (MD with it does not conserve energy) and the force on i and on j are not opposite
(no Newton's third law): use it for speed (no backward pass) only. Stress still comes from the energy by autograd.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch
from e3nn import o3
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from matsim.core.errors import StructureError
from matsim.core.graph import AtomGraph
from matsim.models import MODELS
from matsim.models.base import Potential
from matsim.models.layers.mlp import MLP
from matsim.models.layers.radial import BesselBasis, PolynomialEnvelope

__all__ = ["EScAIP", "NeighborAttentionLayer", "NeighborLayout"]

_OVERFLOW_POLICIES = ("error", "warn", "truncate")


class NeighborLayout:
    """Packed neighbor tokens and where each sits in the padded (N, width) attention grid (slot 0 = centre token).

    Tokens are stored packed, T = N centre tokens followed by the E' kept edges, so that token-wise layers never
    touch padding; only the attention itself runs on the padded grid.

    Attributes:
        edges: (E',) indices of the kept edges (all edges unless truncated), ordered by (centre, distance).
        slots: (T,) index of each token in the flattened (N · width) grid: centres first, then the kept edges.
        width: sequence length, 1 + number of neighbor slots.
        num_atoms: N.
    """

    def __init__(self, edges: torch.Tensor, flat: torch.Tensor, width: int, num_atoms: int) -> None:
        self.edges, self.width, self.num_atoms = edges, width, num_atoms
        centre_slots = torch.arange(num_atoms, device=flat.device) * width
        self.slots = torch.cat([centre_slots, flat])

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """Packed ``values`` (T, ...) → (N, width, ...), zeros in the padding slots."""
        shape = (self.num_atoms * self.width,) + tuple(values.shape[1:])
        out = values.new_zeros(shape).index_copy(0, self.slots, values)
        return out.view((self.num_atoms, self.width) + tuple(values.shape[1:]))

    def unpad(self, values: torch.Tensor) -> torch.Tensor:
        """Padded (N, width, ...) → packed (T, ...)."""
        return values.reshape((self.num_atoms * self.width,) + tuple(values.shape[2:]))[self.slots]

    def occupied(self) -> torch.Tensor:
        """(N, 1, 1, width) bool attention mask: True on the centre and the neighbor slots, False on padding."""
        mask = torch.zeros(self.num_atoms * self.width, dtype=torch.bool, device=self.slots.device)
        return mask.index_fill(0, self.slots, True).view(self.num_atoms, 1, 1, self.width)


class NeighborAttentionLayer(nn.Module):
    """One EScAIP-style block on neighbor tokens and atom states (see the module docstring, step 3).

    Args:
        hidden: token and atom feature width.
        num_heads: attention heads (divide ``hidden``).
        ffn_multiplier: width multiplier of the feed-forward block.
        avg_num_neighbors: normalisation n̄ of the envelope-weighted sum of tokens into the atom update.

    Shapes: ``h`` (N, hidden); ``tokens`` (T, hidden) packed (see :class:`NeighborLayout`); ``centre`` and
    ``neighbor`` (T,) the atom whose neighborhood holds the token and the atom it stands for (the centre itself for
    centre tokens); ``key_weight`` (T, heads) attention weight w of each key (envelope × radial gate; 1 for centre
    tokens); ``occupied`` (N, 1, 1, width) bool mask of the padded grid; ``weight`` (T,) envelope of each token (0 for
    centre tokens). Returns the new ``(h, tokens)``.
    Needs ``hidden / num_heads ≥ 2``: one channel of every head carries the attention normaliser.
    """

    def __init__(self, hidden: int, num_heads: int, ffn_multiplier: int, avg_num_neighbors: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.node_to_token = nn.Linear(hidden, 2 * hidden)
        self.norm_attention = nn.LayerNorm(hidden)
        self.value_dim = self.head_dim - 1  # the last channel of each head carries the weight w
        self.qk = nn.Linear(hidden, 2 * hidden)
        self.value = nn.Linear(hidden, num_heads * self.value_dim)
        self.attention_out = nn.Linear(num_heads * self.value_dim, hidden)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = MLP([hidden, ffn_multiplier * hidden, hidden])
        # bias-free: a zero aggregate (no neighbors) leaves the atom state unchanged, bit for bit
        self.node_update = MLP([hidden, hidden, hidden], bias=False)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, centre: torch.Tensor, neighbor: torch.Tensor,
                key_weight: torch.Tensor, layout: NeighborLayout, occupied: torch.Tensor,
                weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = tokens.shape[0]
        from_neighbor, from_centre = self.node_to_token(h).chunk(2, dim=-1)
        tokens = tokens + from_neighbor[neighbor] + from_centre[centre]

        x = self.norm_attention(tokens)
        q, k = self.qk(x).view(num_tokens, 2, self.num_heads, self.head_dim).unbind(1)
        v = self.value(x).view(num_tokens, self.num_heads, self.value_dim)
        w = key_weight.unsqueeze(-1)
        values = torch.cat([v * w, w], dim=-1)  # (T, heads, d): the last channel carries the weight
        q, k, values = (layout.pad(t).transpose(1, 2) for t in (q, k, values))  # (N, heads, width, ·)
        if self.training:  # the fused kernels have no double backward (force losses need it)
            with sdpa_kernel(SDPBackend.MATH):
                attended = F.scaled_dot_product_attention(q, k, values, attn_mask=occupied)
        else:
            attended = F.scaled_dot_product_attention(q, k, values, attn_mask=occupied)
        attended = layout.unpad(attended.transpose(1, 2))  # (T, heads, d)
        normaliser = attended[..., -1:].clamp_min(torch.finfo(attended.dtype).tiny)
        attended = (attended[..., :-1] / normaliser).reshape(num_tokens, self.num_heads * self.value_dim)
        tokens = tokens + self.attention_out(attended)
        tokens = tokens + self.ffn(self.norm_ffn(tokens))

        message = torch.zeros_like(h).index_add(0, centre, weight.unsqueeze(1) * tokens) / self.avg_num_neighbors
        return h + self.node_update(message), tokens


@MODELS.register("escaip")
class EScAIP(Potential):
    """Neighbor-attention potential in the style of EScAIP (see the module docstring for the architecture).

    Args:
        cutoff: interaction cutoff, Å.
        species: supported atomic numbers.
        atomic_energies: E0 per element {Z: eV}: the energy of an isolated atom (missing species get 0).
        hidden: width of atom states and neighbor tokens.
        num_layers: attention blocks.
        num_heads: attention heads (divide ``hidden``; head_dim = hidden / num_heads).
        num_radial: size of the Bessel basis of edge lengths.
        max_neighbors: neighbor slots per atom (sequence length - 1). Must cover the densest environment within
            ``cutoff`` (see ``neighbor_overflow``; liquid water at 5 Å: 55 on average, 62 at most). Without
            ``static_padding`` the cost follows the largest actual neighborhood, so a generous value is free.
        l_max_angular: highest l of the bond-orientational (spherical-harmonic) features; 0 turns angles off.
        angular_channels: learned radial channels k of the angular densities.
        ffn_multiplier: feed-forward width multiplier of each block.
        avg_num_neighbors: n̄, normalisation of neighbor sums (a dataset statistic; a constant, never the actual
            count, which would jump when a neighbor enters the cutoff).
        direct_forces: add the non-conservative direct-force head and let ForceField use it (no backward pass for
            forces; see the module docstring). Default False: forces = -dE/dr.
        energy_scale: eV per unit of network output (a dataset statistic, e.g. the force RMS).
        energy_shift: eV added to *every* atom on top of E0 (also to isolated atoms: an isolated atom's energy is
            E0 + energy_shift); keep 0 when E0s are fitted, use it instead of E0s otherwise.
        static_padding: always pad to ``max_neighbors`` (fixed shapes, for torch.compile / CUDA graphs); otherwise
            pad to the largest neighborhood of the batch (less work on small or sparse systems).
        neighbor_overflow: what to do when an atom has more than ``max_neighbors`` neighbors: ``"error"`` (default,
            a StructureError), ``"warn"`` or ``"truncate"`` (keep the nearest; the energy is then discontinuous).
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        species: Sequence[int] = (1, 3, 6, 8, 9, 15),
        atomic_energies: Mapping[int | str, float] | None = None,
        hidden: int = 64,
        num_layers: int = 3,
        num_heads: int = 4,
        num_radial: int = 16,
        max_neighbors: int = 96,
        l_max_angular: int = 3,
        angular_channels: int = 8,
        ffn_multiplier: int = 2,
        avg_num_neighbors: float = 20.0,
        direct_forces: bool = False,
        energy_scale: float = 1.0,
        energy_shift: float = 0.0,
        static_padding: bool = False,
        neighbor_overflow: str = "error",
    ) -> None:
        super().__init__(cutoff, species, atomic_energies)
        if hidden % num_heads or hidden // num_heads < 2:
            raise ValueError(f"num_heads={num_heads} must divide hidden={hidden} with at least 2 channels per head")
        if max_neighbors < 1 or num_layers < 1 or l_max_angular < 0 or angular_channels < 1:
            raise ValueError("max_neighbors, num_layers and angular_channels must be ≥ 1 and l_max_angular ≥ 0")
        if neighbor_overflow not in _OVERFLOW_POLICIES:
            allowed = ", ".join(_OVERFLOW_POLICIES)
            raise ValueError(f"neighbor_overflow must be one of {allowed}, got {neighbor_overflow!r}")
        self.hyperparameters = {
            "cutoff": float(cutoff), "species": list(self.species),
            "atomic_energies": {int(z): float(e) for z, e in (atomic_energies or {}).items()} or None,
            "hidden": hidden, "num_layers": num_layers, "num_heads": num_heads, "num_radial": num_radial,
            "max_neighbors": max_neighbors, "l_max_angular": l_max_angular, "angular_channels": angular_channels,
            "ffn_multiplier": ffn_multiplier, "avg_num_neighbors": float(avg_num_neighbors),
            "direct_forces": bool(direct_forces), "energy_scale": float(energy_scale),
            "energy_shift": float(energy_shift), "static_padding": bool(static_padding),
            "neighbor_overflow": neighbor_overflow,
        }
        self.direct_forces = bool(direct_forces)
        self.hidden = hidden
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.max_neighbors = int(max_neighbors)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)
        self.static_padding = bool(static_padding)
        self.neighbor_overflow = neighbor_overflow

        self.radial_basis = BesselBasis(num_radial, cutoff, trainable=False)
        self.envelope = PolynomialEnvelope(cutoff, 6)
        self.spherical_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(l_max_angular), normalize=True, normalization="component"
        )
        # (D, l_max+1) one-hot: which l each spherical-harmonic component belongs to (sums over m by a matmul)
        degrees = torch.arange(l_max_angular + 1)
        l_of_component = torch.repeat_interleave(degrees, 2 * degrees + 1)
        self.register_buffer(
            "l_onehot", F.one_hot(l_of_component, l_max_angular + 1).to(torch.get_default_dtype()), persistent=False
        )
        self.angular_radial = nn.Linear(num_radial, angular_channels, bias=False)
        num_angular = angular_channels * (l_max_angular + 1)

        self.node_embedding = nn.Embedding(self.num_species, hidden)
        self.centre_embedding = nn.Embedding(self.num_species, hidden)
        self.neighbor_embedding = nn.Embedding(self.num_species, hidden)
        self.edge_input = nn.Linear(num_radial + num_angular, hidden)
        self.token_input = MLP([hidden, hidden, hidden])
        self.attention_gate = nn.Linear(num_radial, num_heads * num_layers)
        self.layers = nn.ModuleList(
            NeighborAttentionLayer(hidden, num_heads, ffn_multiplier, avg_num_neighbors) for _ in range(num_layers)
        )
        self.energy_head = nn.Sequential(nn.LayerNorm(hidden), MLP([hidden, hidden, 1]))
        self.force_head = MLP([hidden, hidden, 1]) if direct_forces else None

    # ------------------------------------------------------------------ neighborhoods
    def neighbor_layout(self, centre: torch.Tensor, lengths: torch.Tensor, num_atoms: int,
                        edges_per_atom: int | None = None) -> NeighborLayout:
        """Sort edges by (centre, distance) and assign padded slots 1..; see ``neighbor_overflow`` for big shells.

        ``edges_per_atom``: every atom is known to be the centre of exactly that many edges (the all-pairs lists of
        a CUDA-graph training batch, ``graph.static_edges``); the layout then needs no read-back from the device
        and no data-dependent shapes, so it can be captured.
        """
        num_edges = centre.shape[0]
        with torch.no_grad():
            order = torch.argsort(lengths.detach(), stable=True)
            order = order[torch.argsort(centre[order], stable=True)]
            if edges_per_atom is not None:  # every atom's edges start at centre * edges_per_atom of the order
                if edges_per_atom > self.max_neighbors:
                    raise StructureError(f"every atom has {edges_per_atom} edges, more than max_neighbors="
                                         f"{self.max_neighbors} of this escaip model")
                rank = torch.arange(num_edges, device=centre.device) % max(edges_per_atom, 1)
                flat = centre[order] * (edges_per_atom + 1) + rank + 1
                return NeighborLayout(order, flat, edges_per_atom + 1, num_atoms)
            counts = torch.bincount(centre, minlength=num_atoms)
            start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(num_edges, device=centre.device) - start[centre[order]]
        needs_count = not (self.static_padding and self.neighbor_overflow == "truncate")
        largest = int(counts.max()) if needs_count and num_edges else 0  # one host sync
        if largest > self.max_neighbors:
            atom = int(torch.argmax(counts))
            message = (
                f"atom {atom} has {largest} neighbors within the {self.cutoff} Å cutoff, more than "
                f"max_neighbors={self.max_neighbors} of this escaip model"
            )
            if self.neighbor_overflow == "error":
                raise StructureError(
                    message + "; build the model with a larger max_neighbors (or neighbor_overflow='truncate', "
                    "which keeps the nearest neighbors at the cost of a discontinuous energy)"
                )
            if self.neighbor_overflow == "warn":
                warnings.warn(message + ": keeping the nearest ones (the energy is discontinuous)", stacklevel=3)
        slots = self.max_neighbors if self.static_padding else min(largest, self.max_neighbors)
        width = slots + 1
        if largest > slots or (self.static_padding and self.neighbor_overflow == "truncate"):
            keep = rank < slots
            order, rank = order[keep], rank[keep]
        flat = centre[order] * width + rank + 1
        return NeighborLayout(order, flat, width, num_atoms)

    # ------------------------------------------------------------------ forward
    def forward(self, graph: AtomGraph) -> dict[str, Any]:
        numbers = graph.numbers
        species = self.species_of(numbers)
        num_atoms = numbers.shape[0]
        centre_all, neighbor_all = graph.edge_index
        lengths_all = torch.linalg.vector_norm(graph.edge_vec, dim=1)
        edges_per_atom = centre_all.shape[0] // num_atoms if getattr(graph, "static_edges", False) else None
        layout = self.neighbor_layout(centre_all, lengths_all, num_atoms, edges_per_atom)
        edges = layout.edges
        centre, neighbor = centre_all[edges], neighbor_all[edges]
        vectors, lengths = graph.edge_vec[edges], lengths_all[edges]

        envelope = self.envelope(lengths)  # (E',)
        radial = self.radial_basis(lengths)  # (E', R)
        harmonics = self.spherical_harmonics(vectors)  # (E', D)

        # bond-orientational features: angular density per atom, contracted with each edge's own harmonics
        phi = self.angular_radial(radial) * envelope.unsqueeze(1)  # (E', K)
        density = torch.zeros(num_atoms, phi.shape[1], harmonics.shape[1], dtype=phi.dtype, device=phi.device)
        density = density.index_add(0, centre, phi.unsqueeze(2) * harmonics.unsqueeze(1)) / self.avg_num_neighbors
        angular = (density[centre] * harmonics.unsqueeze(1)) @ self.l_onehot.to(phi.dtype)  # (E', K, l_max+1)

        edge_features = self.edge_input(torch.cat([radial, angular.flatten(1)], dim=1))
        edge_features = (edge_features + self.centre_embedding(species)[centre]
                         + self.neighbor_embedding(species)[neighbor])
        atoms = torch.arange(num_atoms, device=numbers.device)
        token_centre, token_neighbor = torch.cat([atoms, centre]), torch.cat([atoms, neighbor])
        edge_tokens = self.token_input(edge_features)
        tokens = torch.cat([edge_tokens.new_zeros(num_atoms, edge_tokens.shape[1]), edge_tokens])  # centres start at 0
        weight = torch.cat([envelope.new_zeros(num_atoms), envelope])  # (T,): 0 for centre tokens
        occupied = layout.occupied()

        # attention weight of every key, per layer and head: u(r) · 2σ(gate(r)); 1 for centre tokens
        gates = 2.0 * torch.sigmoid(self.attention_gate(radial)) * envelope.unsqueeze(1)  # (E', layers · heads)
        key_weights = torch.cat([gates.new_ones(num_atoms, gates.shape[1]), gates])
        key_weights = key_weights.view(-1, self.num_layers, self.num_heads)

        h0 = self.node_embedding(species)
        h = h0
        for index, layer in enumerate(self.layers):
            h, tokens = layer(h, tokens, token_centre, token_neighbor, key_weights[:, index], layout, occupied, weight)

        readout = self.energy_head(torch.cat([h, h0], dim=0)).squeeze(1)
        learned = (readout[:num_atoms] - readout[num_atoms:]) * self.energy_scale
        energies = learned + self.energy_shift + self.reference_energies(numbers).to(learned.dtype)
        batch = graph.system_index()
        short = torch.zeros(graph.num_systems, dtype=learned.dtype, device=learned.device).index_add(0, batch, learned)
        out: dict[str, Any] = {"energies": energies, "terms": {"short": short}}
        if self.force_head is not None:
            unit = vectors / lengths.unsqueeze(1)  # (E', 3)
            strength = self.force_head(tokens[num_atoms:]).squeeze(1) * envelope  # (E',)
            forces = vectors.new_zeros(num_atoms, 3).index_add(0, centre, strength.unsqueeze(1) * unit)
            out["forces"] = forces * self.energy_scale
        return out

    def extra_repr(self) -> str:
        return (f"cutoff={self.cutoff}, species={self.species}, max_neighbors={self.max_neighbors}, "
                f"direct_forces={self.direct_forces}")
