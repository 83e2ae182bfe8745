"""Short-range nuclear repulsion: the ZBL universal screened Coulomb potential, switched off at covalent distances.

Why: a network fitted to near-equilibrium DFT data has no reason to be repulsive where it has never seen an atom,
and MD finds such holes: the electrolyte fine-tunes of ``benchmarks/electrolyte/results/anion_finetunes.md`` were
stopped by the watchdog with Li⁺–O, H···F and N···O contacts of 0.4 Å. Adding the physical
repulsion of two nuclei as a fixed energy term makes such contacts cost what they cost (hundreds of eV), and the
network learns the rest, as NequIP/Allegro and MACE do with their ZBL pair terms.

Pair energy, eV, for atoms with atomic numbers Z_i, Z_j at distance r (Å), Ziegler–Biersack–Littmark (1985):

    E_ZBL(r) = k Z_i Z_j / r · φ(r / a),   a = 0.8854 a₀ / (Z_i^0.23 + Z_j^0.23)  (0.8854 a₀ = 0.46853 Å)
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x) + 0.02817 e^(−0.20162 x)

with k = e²/(4πε₀) = 14.399645 eV·Å, multiplied by the polynomial envelope u(r / r_max) of degree p = 6 (:class:`~matsim.models.layers.radial.PolynomialEnvelope`) (value, first
and second derivative vanish at r_max) with r_max = R_i + R_j, the sum of the covalent radii (ASE's
``covalent_radii``), so the term acts only inside bonding distance (as MACE's ZBL basis does):

    u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) − p(p+1)/2 x^(p+2)   for x < 1, else 0.

Each atom gets half of each of its pair energies. The term has no trainable weights.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import nn

from matsim.core.graph import AtomGraph
from matsim.core.units import COULOMB_EV_A
from matsim.models.layers.radial import PolynomialEnvelope

__all__ = ["ZBLRepulsion", "zbl_pair_energy"]

#: Universal screening function φ: coefficients and exponents (ZBL 1985).
_PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
_PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
#: Screening length prefactor 0.8854 a₀ (Bohr radius 0.529177 Å), Å.
_SCREENING_A = 0.8854 * 0.529177210544
#: u(x) of the module docstring: the DimeNet polynomial envelope with cutoff 1 applied to x = r / r_max.
_UNIT_ENVELOPE = PolynomialEnvelope(cutoff=1.0, p=6)


def zbl_pair_energy(r: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, r_max: torch.Tensor) -> torch.Tensor:
    """Enveloped ZBL energy (eV) of pairs at distances ``r`` (E,) Å with atomic numbers ``z_i``, ``z_j`` (E,) and
    switch-off distances ``r_max`` (E,) Å."""
    z_i, z_j = z_i.to(r.dtype), z_j.to(r.dtype)
    a = _SCREENING_A / (z_i**0.23 + z_j**0.23)
    x = r / a
    phi = sum(c * torch.exp(-e * x) for c, e in zip(_PHI_COEFFICIENTS, _PHI_EXPONENTS))
    return COULOMB_EV_A * z_i * z_j / r * phi * _UNIT_ENVELOPE(r / r_max)


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL repulsion energies (N,) eV over the graph's edges (``edge_index``, ``edge_vec``: every pair in both
    directions, as :class:`~matsim.models.forcefield.ForceField` provides them), each pair switched off at the sum
    of its covalent radii. Energy terms take ``(graph, charges)``; the charges are not used."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("covalent_radii", torch.tensor(covalent_radii, dtype=torch.float64), persistent=False)

    def forward(self, graph: AtomGraph, charges: torch.Tensor | None = None) -> torch.Tensor:
        i, j = graph.edge_index
        r = torch.linalg.vector_norm(graph.edge_vec, dim=1)
        numbers = graph.numbers
        radii = self.covalent_radii.to(r.dtype)
        r_max = radii[numbers[i]] + radii[numbers[j]]
        pair = zbl_pair_energy(r, numbers[i], numbers[j], r_max)  # zero beyond r_max (no data-dependent shapes)
        energies = torch.zeros(numbers.shape[0], dtype=r.dtype, device=r.device)
        return energies.index_add(0, i, 0.5 * pair)
