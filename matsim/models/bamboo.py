"""BAMBOO-style equivariant graph transformer with learned charges, electrostatics and dispersion.

The energy is split into separately switchable terms (BAMBOO, arXiv:2404.07181; our own implementation):

    E = E_short + E_coulomb + E_dispersion + E_repulsion

- ``E_short``: an equivariant graph transformer (:class:`EquivariantAttentionBlock` layers on ``C×0e + C×1o (+ C×2e)``
  features) reads only the edge vectors within the cutoff and predicts per-atom interaction energies. The learned
  part is ``readout(h_L) - readout(h_0)``, zero for an atom without neighbors, so an isolated atom has exactly E0.
- Charges: a head on the final scalars predicts raw charges q̃_i; the excess is spread evenly over the system's atoms,
  q_i = q̃_i + (Q - Σ_j q̃_j) / N, so charges sum exactly to each system's total charge Q.
- ``E_coulomb`` (``electrostatics=True``): Gaussian-damped Coulomb between the learned charges; all pairs for
  molecules, Ewald for periodic cells (:mod:`matsim.models.layers.electrostatics`).
- ``E_dispersion`` (``dispersion="b3lyp"`` etc.): DFT-D3(BJ) (:mod:`matsim.models.layers.dispersion`), added at
  inference on top of a fit to dispersion-free DFT, as BAMBOO does.
- ``E_repulsion`` (``repulsion=True``): ZBL screened nuclear repulsion inside covalent distances
  (:mod:`matsim.models.layers.repulsion`), a fixed prior so that MD cannot collapse atoms where the network has seen
  no data; the network is fitted to the rest.

The charge-equilibration penalty that makes fixed-charge forces consistent is a training loss
(:func:`matsim.models.layers.electrostatics.charge_equilibration_penalty`), not part of the forward pass.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from e3nn import o3
from torch import nn

from matsim.core.graph import AtomGraph
from matsim.models import MODELS
from matsim.models.base import Potential
from matsim.models.layers.equivariant import EquivariantAttentionBlock, node_irreps
from matsim.models.layers.mlp import MLP
from matsim.models.layers.radial import BesselBasis, PolynomialEnvelope

__all__ = ["Bamboo"]


@MODELS.register("bamboo")
class Bamboo(Potential):
    """Equivariant graph transformer potential with optional charges, electrostatics and D3 dispersion.

    Args:
        cutoff: short-range cutoff, Å.
        species: supported atomic numbers.
        atomic_energies: E0 per element {Z: eV}.
        channels: multiplicity C of every irrep.
        l_max: highest rotation order of node features (1: scalars + vectors; 2 adds l=2).
        num_layers: attention layers.
        num_heads: attention heads (divides ``channels``).
        num_radial: Bessel radial basis size.
        radial_hidden: hidden width of the radial MLPs.
        avg_num_neighbors: neighbor-sum normalisation (a dataset statistic).
        energy_scale: eV per unit of network output (a dataset statistic, e.g. the force RMS).
        charges: predict per-atom charges (required by ``electrostatics``).
        electrostatics: add the Coulomb/Ewald energy of the learned charges.
        coulomb_smearing: Gaussian width σ of the charges, Å (Coulomb is damped as erf(r/γ)/r, γ = 2σ).
        dispersion: functional name for D3(BJ) (e.g. ``"b3lyp"``), or None for no dispersion.
        repulsion: add the ZBL repulsion term (no weights; fine-tuning may switch it on).
    """

    # Dynamo cannot guard e3nn's Irreps (torch 2.11-2.13, e3nn 0.6: Irrep.__len__ raises NotImplementedError)
    compilable = False
    # D3 and ZBL have no weights: fine-tuning may switch them on (D3: fit to labels that include dispersion) or off
    switchable_hyperparameters = ("dispersion", "repulsion")

    def __init__(
        self,
        cutoff: float = 5.0,
        species: Sequence[int] = (1, 3, 6, 8, 9, 15),
        atomic_energies: Mapping[int | str, float] | None = None,
        channels: int = 32,
        l_max: int = 1,
        num_layers: int = 2,
        num_heads: int = 4,
        num_radial: int = 8,
        radial_hidden: int = 32,
        avg_num_neighbors: float = 20.0,
        energy_scale: float = 1.0,
        charges: bool = True,
        electrostatics: bool = False,
        coulomb_smearing: float = 0.7,
        dispersion: str | None = None,
        repulsion: bool = False,
    ) -> None:
        super().__init__(cutoff, species, atomic_energies)
        if electrostatics and not charges:
            raise ValueError("electrostatics needs charges=True")
        self.has_charges = bool(charges)
        self.energy_scale = float(energy_scale)
        self.irreps = node_irreps(channels, l_max)
        self.embedding = nn.Embedding(self.num_species, channels)
        self.radial_basis = BesselBasis(num_radial, cutoff, trainable=False)
        self.envelope = PolynomialEnvelope(cutoff, 6)
        self.spherical_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(l_max), normalize=True, normalization="component"
        )
        self.layers = nn.ModuleList(
            EquivariantAttentionBlock(self.irreps, num_radial, num_heads, radial_hidden, avg_num_neighbors)
            for _ in range(num_layers)
        )
        self.energy_head = MLP([channels, channels, 1])
        self.charge_head = MLP([channels, channels, 1]) if charges else None
        self.physical_terms = _physical_terms(electrostatics, coulomb_smearing, dispersion, repulsion)

    def forward(self, graph: AtomGraph) -> dict[str, Any]:
        numbers = graph.numbers
        species = self.species_of(numbers)
        batch = graph.system_index()
        edge_vec = graph.edge_vec
        lengths = torch.linalg.vector_norm(edge_vec, dim=1)
        envelope = self.envelope(lengths)
        radial = self.radial_basis(lengths) * envelope.unsqueeze(1)
        edge_sh = self.spherical_harmonics(edge_vec)

        scalars0 = self.embedding(species)
        h = torch.cat([scalars0, scalars0.new_zeros(scalars0.shape[0], self.irreps.dim - scalars0.shape[1])], dim=1)
        for layer in self.layers:
            h = layer(h, graph.edge_index, edge_sh, radial, envelope)
        channels = scalars0.shape[1]
        scalars = h[:, :channels]
        short = (self.energy_head(scalars) - self.energy_head(scalars0)).squeeze(1) * self.energy_scale
        energies = short + self.reference_energies(numbers)
        num_systems = graph.num_systems
        terms = {"short": _per_system(short, batch, num_systems)}
        out: dict[str, Any] = {}
        if self.charge_head is not None:
            charges = neutralise(self.charge_head(scalars).squeeze(1), graph.charge, batch, num_systems)
            out["charges"] = charges
        for name, term in self.physical_terms.items():
            contribution = term(graph, out.get("charges"))
            energies = energies + contribution
            terms[name] = _per_system(contribution, batch, num_systems)
        out["energies"] = energies
        out["terms"] = terms
        return out


def neutralise(raw: torch.Tensor, total_charge: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
    """Shift raw charges (N,) evenly within each system so they sum to ``total_charge`` (B,) exactly."""
    counts = torch.zeros(num_systems, dtype=raw.dtype, device=raw.device).index_add(0, batch, torch.ones_like(raw))
    excess = total_charge.to(raw.dtype) - _per_system(raw, batch, num_systems)
    return raw + (excess / counts)[batch]


def _per_system(values: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
    return torch.zeros(num_systems, dtype=values.dtype, device=values.device).index_add(0, batch, values)


def _physical_terms(electrostatics: bool, smearing: float, dispersion: str | None, repulsion: bool) -> nn.ModuleDict:
    """The switchable physics-based energy terms, each a module ``(graph, charges) -> (N,) eV``."""
    terms = nn.ModuleDict()
    if electrostatics:
        terms["coulomb"] = CoulombTerm(smearing)
    if dispersion:
        from matsim.models.layers.dispersion import DispersionTerm

        terms["dispersion"] = DispersionTerm(dispersion)
    if repulsion:
        from matsim.models.layers.repulsion import ZBLRepulsion

        terms["repulsion"] = ZBLRepulsion()
    return terms


class CoulombTerm(nn.Module):
    """Energy of the learned charges as Gaussian charges of width ``sigma`` Å (point charges for ``sigma = 0``):
    all pairs in molecules, Ewald in 3D-periodic cells
    (:func:`matsim.models.layers.electrostatics.electrostatic_energies`). Returns (N,) eV."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self._pair_lists: dict = {}  # Ewald real-space lists per system, reused between MD steps with a skin

    def forward(self, graph: AtomGraph, charges: torch.Tensor) -> torch.Tensor:
        from matsim.models.layers.electrostatics import electrostatic_energies

        if self.sigma == 0.0:
            return electrostatic_energies(charges, graph, damping="none", pair_lists=self._pair_lists)
        return electrostatic_energies(charges, graph, damping="gaussian", sigma=self.sigma,
                                      pair_lists=self._pair_lists)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
