"""Long-range electrostatics of atomic partial charges: damped Coulomb (molecules) and Ewald sums (3D-periodic cells).

All functions are plain torch, differentiable with respect to positions, cell and charges (forces, stress and
charge gradients come from autograd), run in float32 or float64 on whatever device the inputs live on, and take
batches of systems stored back to back (system ``b`` holds atoms ``ptr[b]:ptr[b+1]``, as in
:class:`~matsim.core.graph.AtomGraph`). Energies are per atom, ``E_i = ½ q_i φ_i`` in eV, with the Coulomb constant
:data:`matsim.core.units.COULOMB_EV_A`; charges in e, lengths in Å.

Damping (one convention for molecules and crystals)
---------------------------------------------------
The pair interaction is ``k q_i q_j f(r)`` with a short-range-damped kernel ``f``:

- ``"gaussian"`` (default): every atom carries a spherical Gaussian charge of standard deviation ``sigma`` (Å; a
  float, or an (N,) tensor of per-atom widths as in QEq / 4G-HDNNP models), so
  ``f(r) = erf(r / γ_ij) / r`` with ``γ_ij = sqrt(2 (σ_i² + σ_j²))``. It is finite at r = 0 (``2 / (√π γ)``),
  smooth, and equals ``1/r`` to better than 1e-6 relative beyond ``3.5 γ``: with the default σ = 0.7 Å (γ = 1.4 Å)
  the damping is complete within 5 Å, i.e. inside a typical short-range cutoff, so the learned short-range energy
  can absorb whatever the damping changes. The self-energy of each Gaussian (``q_i² / (√π γ_ii)``) is left out:
  it is a per-atom function of q_i alone, the job of the model's own electronegativity/hardness term.
- ``"bamboo"``: the damping of BAMBOO (Gong et al., arXiv:2404.07181; reimplemented from the idea, no code taken),
  ``f(r) = 1 / (r0 (1 + softplus_β((r - r0) / r0)))``, a smooth ``1 / max(r, r0)`` with r0 = 2.2 Å, β = 18.7
  (BAMBOO's defaults). BAMBOO applies it to *all* pairs of a system, intramolecular ones included, in training
  (all-pair lists) and, in MD, subtracts the ``erf(αr)/r`` part inside the real-space cutoff and leaves it to
  LAMMPS' PPPM: the same splitting as here, with an Ewald sum in place of PPPM.
- ``"none"``: bare ``1/r`` (point charges; the Madelung test uses it).

Intramolecular pairs are included (as BAMBOO does): the charges are learned with the damping in place, so excluding
bonded pairs would only make the energy depend on a topology the model does not know.

Gaussian damping was made the default because it is the physical model behind Ewald's own splitting: Gaussian
charges interact through ``erf``, so the periodic sum needs nothing beyond a short-range real-space correction, it
converges to the same function for molecules and crystals, and the width has a meaning (charge-density spread).

Periodic systems: Ewald summation
---------------------------------
For a 3D-periodic cell the same damped energy, ``½ Σ_i Σ'_{j,n} k q_i q_j f(|r_ij + n|)`` (tin-foil boundary), is
split as ``f = 1/r - g`` with the short-ranged ``g`` (``erfc(r/γ)/r`` for Gaussians) and the ``1/r`` part summed by
Ewald with splitting parameter α:

- real space over a vesin neighbor list, pairs built on detached coordinates and vectors recomputed from the
  differentiable ``pos``/``cell``: ``k q_i q_j [erfc(α r) / r - g(r)]``; given a ``pair_lists`` cache (as the
  model's Coulomb term passes) the list is built with a 1 Å skin and reused between MD steps;
- reciprocal space over the k-vectors of the (possibly strained) cell, half space ×2:
  ``(4π k / V) Σ_k exp(-k²/4α²) / k² Re[e^{-ik·r_i} S(k)]`` as the per-atom potential;
- self term ``-2 k α q_i / √π`` in φ_i;
- neutralising background for a charged cell (total charge Q): ``φ_bg = -π k Q / (V α²)`` for every atom, so that
  the energy of a charged cell is independent of α (the physical convention of plane-wave DFT codes).

Parameters are chosen from a target relative accuracy ε (:func:`ewald_parameters`), with the standard estimates
(Kolafa & Perram, Mol. Sim. 9, 351 (1992)): both truncation errors decay as ``exp(-s²)`` with ``s = α r_c =
k_c / (2α)``, so ``s = sqrt(-ln ε)``; α balances the cost of the two sums, ``α = √π (N / (w V²))^{1/6}`` (w: cost of
a reciprocal term, atom × k-vector, relative to a real-space pair; 0.1 measured on CPU), and every choice can be
overridden. The k-vector set is chosen on the detached cell, so under a barostat it changes by whole vectors at
|k| = k_c, an energy jump below the accuracy ε. With ε = 1e-6 (default) the NaCl Madelung constant comes out
within 5e-7 relative; a neutral molecule in a large cell reproduces the molecular energy up to the tin-foil dipole
term ``-2πkμ²/(3V)`` and O(L⁻⁵) quadrupole images (both checked in tests/test_electrostatics.py).

Why not torch-pme (0.5.0, installed and checked)
------------------------------------------------
torch-pme's ``EwaldCalculator`` is differentiable with respect to positions and cell and returns per-atom potentials
(with a background correction for charged cells); the tests use it as an independent cross-check. It is not used
here because (i) the damped kernel would have to be written as a custom torch-pme ``Potential`` split into its
range-separated parts, (ii) it works on one system at a time with our neighbor distances anyway, and (iii) the
Ewald sum itself is ~60 lines of torch, which keeps the per-atom energy convention, the automatic parameters and the
damping consistency in one place. For very large cells (≫ 10⁴ atoms) torch-pme's PME would be the way to go.

Slabs (pbc along two directions) are not supported: they need a Yeh–Berkowitz/ELC correction; mixed pbc raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from matsim.core.neighbors import SkinHalfPairList, neighbor_list, positive_shift
from matsim.core.units import COULOMB_EV_A

__all__ = [
    "DAMPINGS",
    "EwaldParameters",
    "ewald_parameters",
    "coulomb_energies",
    "ewald_energies",
    "electrostatic_energies",
    "charge_equilibration_penalty",
]

#: Damping kernels known to this module.
DAMPINGS = ("gaussian", "bamboo", "none")

#: Default Gaussian width of each atomic charge, Å (pair damping complete within 5 Å, see module docstring).
DEFAULT_SIGMA = 0.7
#: BAMBOO's damping radius (Å) and softplus steepness.
BAMBOO_R0 = 2.2
BAMBOO_BETA = 18.7
#: Relative cost of one reciprocal-space term (atom × k-vector) to one real-space pair (neighbor search included),
#: measured on CPU (float64, energy + forces, 1000 atoms): used only to balance the two sums when α is not given.
EWALD_COST_RATIO = 0.1
#: Skin of the real-space pair lists kept between calls when a ``pair_lists`` cache is given, Å.
EWALD_SKIN = 1.0

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


# ---------------------------------------------------------------------------------------------------------- damping
@dataclass(frozen=True)
class _Damping:
    kind: str
    sigma: float | torch.Tensor
    r0: float
    beta: float

    @classmethod
    def make(cls, damping: str, sigma: Any, r0: float, beta: float) -> "_Damping":
        if damping not in DAMPINGS:
            raise ValueError(f"unknown damping {damping!r}; choose one of {', '.join(DAMPINGS)}")
        if damping == "gaussian":
            smallest = float(sigma.min()) if torch.is_tensor(sigma) else float(sigma)
            if smallest <= 0:
                raise ValueError(f"Gaussian widths sigma must be positive, got {smallest}")
        if damping == "bamboo" and (r0 <= 0 or beta <= 0):
            raise ValueError(f"bamboo damping needs r0 > 0 and beta > 0, got r0={r0}, beta={beta}")
        return cls(damping, sigma, float(r0), float(beta))

    def gamma(self, i: torch.Tensor, j: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """Width of the pair kernel γ_ij = sqrt(2 (σ_i² + σ_j²)), per pair or a float."""
        if torch.is_tensor(self.sigma):
            s = self.sigma.to(like)
            return torch.sqrt(2.0 * (s[i] ** 2 + s[j] ** 2))
        return 2.0 * float(self.sigma)

    def max_gamma(self) -> float:
        s = float(self.sigma.max()) if torch.is_tensor(self.sigma) else float(self.sigma)
        return 2.0 * s

    def kernel(self, r: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """f(r), 1/Å: the damped Coulomb kernel."""
        if self.kind == "none":
            return 1.0 / r
        if self.kind == "gaussian":
            x = r / gamma
            small = x < 1e-4
            safe_r = torch.where(small, torch.ones_like(r), r)
            series = _TWO_OVER_SQRT_PI * (1.0 - x * x / 3.0) / gamma
            return torch.where(small, series, torch.erf(x) / safe_r)
        return 1.0 / (self.r0 * (1.0 + _softplus((r - self.r0) / self.r0, self.beta)))

    def correction(self, r: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """g(r) = 1/r - f(r), 1/Å: the short-ranged part that damping removes (r > 0)."""
        if self.kind == "none":
            return torch.zeros_like(r)
        if self.kind == "gaussian":
            return torch.erfc(r / gamma) / r
        return 1.0 / r - self.kernel(r, gamma)

    def range(self, accuracy: float) -> float:
        """Distance (Å) beyond which |g(r)| r < accuracy."""
        if self.kind == "none":
            return 0.0
        if self.kind == "gaussian":
            return self.max_gamma() * math.sqrt(-math.log(accuracy))
        # 1 - (r/r0)/(1+softplus) ~ exp(-β (r - r0)/r0)
        return self.r0 * (1.0 + (-math.log(accuracy)) / self.beta)


def _softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """log(1 + exp(β x)) / β without torch's threshold switch (exactly smooth)."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-beta * x.abs())) / beta


# ------------------------------------------------------------------------------------------------------- molecules
def coulomb_energies(
    charges: torch.Tensor,
    pos: torch.Tensor,
    ptr: torch.Tensor | None = None,
    *,
    damping: str = "gaussian",
    sigma: float | torch.Tensor = DEFAULT_SIGMA,
    r0: float = BAMBOO_R0,
    beta: float = BAMBOO_BETA,
) -> torch.Tensor:
    """Per-atom damped Coulomb energies of non-periodic systems: all pairs within each system (O(n²) per system).

    Args:
        charges: (N,) partial charges, e.
        pos: (N, 3) positions, Å.
        ptr: (B + 1,) offsets of the systems (``None``: one system).
        damping, sigma, r0, beta: the damped kernel (see the module docstring); ``sigma`` a float or (N,) tensor, Å.

    Returns:
        (N,) energies ``½ q_i k Σ_{j≠i} q_j f(r_ij)``, eV.
    """
    damp = _Damping.make(damping, sigma, r0, beta)
    n = pos.shape[0]
    charges = charges.to(pos.dtype)
    if ptr is None:
        ptr = torch.tensor([0, n], device=pos.device)
    i, j = _all_pairs(ptr, pos.device)
    out = torch.zeros(n, dtype=pos.dtype, device=pos.device)
    if i.numel() == 0:
        return out + 0.0 * charges  # keep the graph to the charges
    r = torch.linalg.vector_norm(pos[j] - pos[i], dim=1)
    e_pair = COULOMB_EV_A * charges[i] * charges[j] * damp.kernel(r, damp.gamma(i, j, r))
    # each unordered pair once: half of it to each atom
    return out.index_add(0, i, 0.5 * e_pair).index_add(0, j, 0.5 * e_pair)


def _all_pairs(ptr: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unordered pairs i < j within each system."""
    pairs = []
    offsets = ptr.tolist()
    for start, stop in zip(offsets[:-1], offsets[1:]):
        if stop - start > 1:
            pairs.append(torch.triu_indices(stop - start, stop - start, offset=1, device=device) + start)
    if not pairs:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    ij = torch.cat(pairs, dim=1)
    return ij[0], ij[1]


# ----------------------------------------------------------------------------------------------------------- Ewald
@dataclass(frozen=True)
class EwaldParameters:
    """Splitting parameter ``alpha`` (1/Å), real-space cutoff ``r_cut`` (Å) and reciprocal cutoff ``k_cut`` (1/Å)."""

    alpha: float
    r_cut: float
    k_cut: float


def ewald_parameters(
    cell: torch.Tensor,
    num_atoms: int,
    accuracy: float = 1e-6,
    alpha: float | None = None,
    r_cut: float | None = None,
    k_cut: float | None = None,
    cost_ratio: float = EWALD_COST_RATIO,
) -> EwaldParameters:
    """Ewald parameters for a relative accuracy ``accuracy`` (truncation errors ~ exp(-s²), s = sqrt(-ln ε)).

    Given neither α nor r_cut, α = √π (N / (w V²))^{1/6} balances the real-space (∝ N² r_c³ / V) and reciprocal
    (∝ N V k_c³) costs with w = ``cost_ratio``; then ``r_cut = s / α`` and ``k_cut = 2 α s``. Any of the three may be
    given; the others follow from it.
    """
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"accuracy must lie in (0, 1), got {accuracy}")
    s = math.sqrt(-math.log(accuracy))
    volume = abs(float(torch.linalg.det(cell.detach().double().reshape(3, 3))))
    if alpha is None:
        if r_cut is not None:
            alpha = s / float(r_cut)
        else:
            alpha = math.sqrt(math.pi) * (max(num_atoms, 1) / (cost_ratio * volume**2)) ** (1.0 / 6.0)
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    r_cut = float(r_cut) if r_cut is not None else s / alpha
    k_cut = float(k_cut) if k_cut is not None else 2.0 * alpha * s
    return EwaldParameters(float(alpha), r_cut, k_cut)


def ewald_energies(
    charges: torch.Tensor,
    pos: torch.Tensor,
    cell: torch.Tensor,
    ptr: torch.Tensor | None = None,
    *,
    accuracy: float = 1e-6,
    alpha: float | None = None,
    r_cut: float | None = None,
    k_cut: float | None = None,
    damping: str = "gaussian",
    sigma: float | torch.Tensor = DEFAULT_SIGMA,
    r0: float = BAMBOO_R0,
    beta: float = BAMBOO_BETA,
    total_charge: torch.Tensor | None = None,
    pair_lists: dict[int, SkinHalfPairList] | None = None,
) -> torch.Tensor:
    """Per-atom Ewald energies of 3D-periodic systems (tin-foil boundary, neutralising background if charged).

    Args:
        charges: (N,) e. pos: (N, 3) Å. cell: (3, 3) or (B, 3, 3) rows = cell vectors, Å (may be a strained copy).
        ptr: (B + 1,) system offsets (``None``: one system).
        accuracy, alpha, r_cut, k_cut: see :func:`ewald_parameters` (the overrides apply to every system).
        damping, sigma, r0, beta: the short-range damping (module docstring); ``"none"`` for point charges.
        total_charge: (B,) charge of each cell used for the background term; default Σ q_i of the system (the
            physically consistent choice; pass it only to reproduce a convention).
        pair_lists: a dict owned by the caller (e.g. :class:`~matsim.models.bamboo.CoulombTerm`) in which the
            real-space pair list of each system ``b`` is kept as a :class:`~matsim.core.neighbors.SkinHalfPairList`
            and reused on the next call while it still holds every pair within the real-space cutoff (MD); ``None``
            builds a fresh list every call.

    Returns:
        (N,) energies ``½ q_i φ_i``, eV, summing to the damped periodic energy of each cell.
    """
    damp = _Damping.make(damping, sigma, r0, beta)
    n = pos.shape[0]
    charges = charges.to(pos.dtype)
    cells = cell.reshape(-1, 3, 3).to(pos.dtype)
    if ptr is None:
        ptr = torch.tensor([0, n], device=pos.device)
    offsets = ptr.tolist()
    if len(offsets) - 1 != cells.shape[0]:
        raise ValueError(f"{len(offsets) - 1} systems in ptr but {cells.shape[0]} cells")
    parts = []
    for b, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
        sl = slice(start, stop)
        sub_damp = damp
        if torch.is_tensor(damp.sigma):
            sub_damp = _Damping(damp.kind, damp.sigma[sl], damp.r0, damp.beta)
        q_total = None if total_charge is None else total_charge.reshape(-1)[b]
        pair_list = None
        if pair_lists is not None:
            pair_list = pair_lists.get(b)
            if pair_list is None:
                pair_list = pair_lists[b] = SkinHalfPairList(EWALD_SKIN)
        parts.append(
            _ewald_single(charges[sl], pos[sl], cells[b], sub_damp, accuracy, alpha, r_cut, k_cut, q_total, pair_list)
        )
    if not parts:
        return torch.zeros(0, dtype=pos.dtype, device=pos.device)
    return torch.cat(parts)


def _ewald_single(
    q: torch.Tensor,
    pos: torch.Tensor,
    cell: torch.Tensor,
    damp: _Damping,
    accuracy: float,
    alpha: float | None,
    r_cut: float | None,
    k_cut: float | None,
    total_charge: torch.Tensor | None,
    pair_list: SkinHalfPairList | None = None,
) -> torch.Tensor:
    n = pos.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=pos.dtype, device=pos.device)
    params = ewald_parameters(cell, n, accuracy, alpha, r_cut, k_cut)
    a = params.alpha
    volume = torch.linalg.det(cell).abs()

    # real space: half list (i < j, or i == j with the first non-zero shift component positive)
    cutoff = max(params.r_cut, damp.range(accuracy))
    pbc = torch.ones(3, dtype=torch.bool)
    if pair_list is None:
        edge_index, shifts = neighbor_list(pos.detach(), cell.detach(), pbc, cutoff)
        i, j = edge_index
        keep = (i < j) | ((i == j) & _positive_shift(shifts))
        i, j, shifts = i[keep], j[keep], shifts[keep]
    else:
        (i, j), shifts = pair_list.update(pos, cell, pbc, cutoff)
    r = torch.linalg.vector_norm(pos[j] - pos[i] + shifts @ cell, dim=1)
    if pair_list is not None:  # a reused list also holds pairs in the skin: the sum stops at the cutoff either way
        inside = r < cutoff
        i, j, r = i[inside], j[inside], r[inside]
    h = torch.erfc(a * r) / r - damp.correction(r, damp.gamma(i, j, r))
    phi = torch.zeros(n, dtype=pos.dtype, device=pos.device)
    phi = phi.index_add(0, i, q[j] * h).index_add(0, j, q[i] * h)

    # reciprocal space
    phi = phi + _reciprocal_potential(q, pos, cell, volume, a, params.k_cut)

    # self term and neutralising background
    q_total = q.sum() if total_charge is None else total_charge.to(q)
    phi = phi - _TWO_OVER_SQRT_PI * a * q - math.pi * q_total / (volume * a * a)
    return 0.5 * COULOMB_EV_A * q * phi


_positive_shift = positive_shift


def _reciprocal_potential(
    q: torch.Tensor, pos: torch.Tensor, cell: torch.Tensor, volume: torch.Tensor, alpha: float, k_cut: float
) -> torch.Tensor:
    """(N,) φ_i^rec / k = (4π/V) Σ_{k≠0, |k|<k_c} exp(-k²/4α²)/k² Re[e^{-ik·r_i} S(k)], 1/Å."""
    recip = 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)  # rows b_j with a_i · b_j = 2π δ_ij
    m = _half_space_indices(cell.detach(), recip.detach(), k_cut)
    phi = torch.zeros_like(q)
    if m.shape[0] == 0:
        return phi
    k_vec = m.to(cell) @ recip  # (K, 3), differentiable in the cell
    k2 = (k_vec * k_vec).sum(dim=1)
    coeff = (8.0 * math.pi / volume) * torch.exp(-k2 / (4.0 * alpha * alpha)) / k2  # ×2: half space
    chunk = max(1, int(4_000_000 // max(pos.shape[0], 1)))
    for start in range(0, k_vec.shape[0], chunk):
        sl = slice(start, start + chunk)
        phase = pos @ k_vec[sl].T  # (N, K)
        cos, sin = torch.cos(phase), torch.sin(phase)
        s_cos, s_sin = q @ cos, q @ sin  # (K,)
        phi = phi + cos @ (coeff[sl] * s_cos) + sin @ (coeff[sl] * s_sin)
    return phi


def _half_space_indices(cell: torch.Tensor, recip: torch.Tensor, k_cut: float) -> torch.Tensor:
    """Integer (K, 3) m with 0 < |m @ recip| <= k_cut, one of each ±m pair."""
    lengths = torch.linalg.vector_norm(cell, dim=1)
    n_max = [int(math.floor(k_cut * float(length) / (2.0 * math.pi))) for length in lengths]
    ranges = [torch.arange(-n, n + 1, device=cell.device) for n in n_max]
    m = torch.cartesian_prod(*ranges).reshape(-1, 3)
    m = m[_positive_shift(m)]
    k = m.to(recip) @ recip
    return m[(k * k).sum(dim=1) <= k_cut * k_cut]


# ------------------------------------------------------------------------------------------------------- dispatcher
def electrostatic_energies(
    charges: torch.Tensor,
    graph: Any,
    *,
    damping: str = "gaussian",
    sigma: float | torch.Tensor = DEFAULT_SIGMA,
    r0: float = BAMBOO_R0,
    beta: float = BAMBOO_BETA,
    accuracy: float = 1e-6,
    alpha: float | None = None,
    r_cut: float | None = None,
    k_cut: float | None = None,
    pair_lists: dict[int, SkinHalfPairList] | None = None,
) -> torch.Tensor:
    """Per-atom electrostatic energies (N,), eV, of a batch: damped Coulomb for molecules, Ewald for 3D-periodic cells.

    Args:
        charges: (N,) e (e.g. a model's predicted charges; differentiable).
        graph: anything with ``pos`` (N, 3), ``cell`` (B, 3, 3), ``pbc`` (B, 3) and, for a batch, ``ptr`` (B + 1,)
            (an :class:`~matsim.core.graph.AtomGraph`; inside a potential, the possibly strained copies the
            :class:`~matsim.models.forcefield.ForceField` passes in, so stress follows by autograd).
        damping, sigma, r0, beta, accuracy, alpha, r_cut, k_cut, pair_lists: see :func:`coulomb_energies`,
            :func:`ewald_energies` (``pair_lists`` is used for batches that are all periodic).

    Raises:
        ValueError: for a system periodic along only some directions (slabs/wires are not supported).
    """
    pos, cells = graph.pos, graph.cell.reshape(-1, 3, 3)
    pbc = torch.as_tensor(graph.pbc).reshape(-1, 3).cpu()
    ptr = getattr(graph, "ptr", None)
    if ptr is None:
        ptr = torch.tensor([0, pos.shape[0]], device=pos.device)
    periodic, isolated = pbc.all(dim=1), ~pbc.any(dim=1)
    mixed = ~(periodic | isolated)
    if bool(mixed.any()):
        bad = int(torch.nonzero(mixed)[0])
        raise ValueError(
            f"system {bad} is periodic along some directions only (pbc={pbc[bad].tolist()}): electrostatics supports "
            "molecules (no pbc) and 3D-periodic cells; give the slab a full 3D cell with vacuum, or no pbc"
        )
    options = dict(damping=damping, sigma=sigma, r0=r0, beta=beta)
    if bool(isolated.all()):
        return coulomb_energies(charges, pos, ptr, **options)
    ewald_options = dict(accuracy=accuracy, alpha=alpha, r_cut=r_cut, k_cut=k_cut, **options)
    if bool(periodic.all()):
        return ewald_energies(charges, pos, cells, ptr, pair_lists=pair_lists, **ewald_options)
    # a mixed batch: dispatch system by system, keeping atom order
    offsets = ptr.tolist()
    parts = []
    for b, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
        sl = slice(start, stop)
        opts = dict(options)
        if torch.is_tensor(sigma):
            opts["sigma"] = sigma[sl]
        if bool(periodic[b]):
            opts.update(accuracy=accuracy, alpha=alpha, r_cut=r_cut, k_cut=k_cut)
            parts.append(ewald_energies(charges[sl], pos[sl], cells[b], **opts))
        else:
            parts.append(coulomb_energies(charges[sl], pos[sl], **opts))
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------ charge equilibration
def charge_equilibration_penalty(
    energy_total: torch.Tensor,
    charges: torch.Tensor,
    batch: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """BAMBOO's charge-equilibration condition as a differentiable loss: Var_i(∂E/∂q_i) within each system.

    At charge equilibrium (QEq) the electronegativity ∂E/∂q_i is the same on every atom of a system (a chemical
    potential μ, the Lagrange multiplier of the total-charge constraint). Then the forces at fixed charges equal the
    total derivative: dE/dr = ∂E/∂r|_q + Σ_i μ ∂q_i/∂r = ∂E/∂r|_q, since Σ_i q_i is fixed. BAMBOO penalises the
    residual force Σ_i ∂E_q/∂q_i ∂q_i/∂r; this function penalises its cause directly.

    Args:
        energy_total: energies that depend on ``charges`` through autograd: (B,) per system, or a scalar (summed
            anyway), eV — typically the electrostatic energy plus the model's electronegativity/hardness energy.
        charges: (N,) the charges the energy was computed from (part of the autograd graph), e.
        batch: (N,) system index of each atom (``None``: one system).
        reduction: ``"mean"`` (a scalar: the mean over atoms of the squared deviation), ``"none"`` ((N,) squared
            deviations) or ``"system"`` ((B,) per-system variances).

    Returns:
        The squared deviation of ∂E/∂q_i from its per-system mean, eV²/e²; differentiable (the graph is kept) so that
        it can be added to a training loss.
    """
    (grad,) = torch.autograd.grad(energy_total.sum(), charges, create_graph=True, allow_unused=True)
    if grad is None:  # the energy does not depend on the charges: nothing to equilibrate
        grad = torch.zeros_like(charges)
    if batch is None:
        batch = torch.zeros(charges.shape[0], dtype=torch.long, device=charges.device)
    num_systems = int(batch.max()) + 1 if batch.numel() else 0
    counts = torch.zeros(num_systems, dtype=grad.dtype, device=grad.device).index_add(
        0, batch, torch.ones_like(grad)
    )
    mean = torch.zeros(num_systems, dtype=grad.dtype, device=grad.device).index_add(0, batch, grad) / counts
    squared = (grad - mean[batch]) ** 2
    if reduction == "none":
        return squared
    if reduction == "system":
        return torch.zeros_like(mean).index_add(0, batch, squared) / counts
    if reduction == "mean":
        return squared.mean()
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'none' or 'system'")
