"""Electrostatics layer: damped Coulomb for molecules, Ewald for periodic cells, charge-equilibration penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from matsim.core.graph import AtomGraph
from matsim.core.units import COULOMB_EV_A
from matsim.models.base import Potential
from matsim.models.forcefield import ForceField
from systems import random_cell
from matsim.models.layers.electrostatics import (
    DEFAULT_SIGMA,
    charge_equilibration_penalty,
    coulomb_energies,
    electrostatic_energies,
    ewald_energies,
    ewald_parameters,
)

K = COULOMB_EV_A
MADELUNG_NACL = 1.747565  # as quoted; the exact value is 1.74756459463...
WIGNER_SC = 2.837297479  # |Madelung constant| of a simple-cubic lattice of point charges in a neutralising background
DAMPINGS = ["gaussian", "bamboo", "none"]


pytestmark = pytest.mark.usefixtures("float64_default")


def random_cell_system(n: int = 10, seed: int = 0, charged: bool = False, dtype=torch.float64):
    """A triclinic cell with n atoms no closer than 1 Å and random charges (neutral unless ``charged``)."""
    rng = np.random.default_rng(seed)
    cell, pos = random_cell(rng, (6.0, 6.4, 5.8), 0.4, n, 1.0)
    q = rng.normal(size=n)
    q = q - q.mean() + (0.7 if charged else 0.0) / n
    t = lambda x: torch.tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    return t(q), t(pos), t(cell)


def neutral_molecule_charges(atoms: Atoms, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q = rng.normal(scale=0.4, size=len(atoms))
    return torch.tensor(q - q.mean())


# ------------------------------------------------------------------------------------------------ Madelung / Ewald
@pytest.mark.parametrize("cubic", [True, False], ids=["conventional", "primitive"])
def test_nacl_madelung_constant(cubic):
    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=cubic)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    q = torch.tensor([1.0 if z == 11 else -1.0 for z in atoms.numbers])
    energy = ewald_energies(q, pos, cell, damping="none").sum()  # default accuracy 1e-6
    madelung = -float(energy) / (len(atoms) / 2) / (K / (a / 2))
    assert madelung == pytest.approx(MADELUNG_NACL, rel=1e-6)
    tight = ewald_energies(q, pos, cell, damping="none", accuracy=1e-10).sum()
    assert -float(tight) / (len(atoms) / 2) / (K / (a / 2)) == pytest.approx(1.7475645946331822, rel=1e-9)


def test_nacl_float32():
    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True)
    pos, cell = torch.tensor(atoms.positions, dtype=torch.float32), torch.tensor(atoms.cell.array, dtype=torch.float32)
    q = torch.tensor([1.0 if z == 11 else -1.0 for z in atoms.numbers], dtype=torch.float32)
    energy = ewald_energies(q, pos, cell, damping="none")
    assert energy.dtype == torch.float32
    assert -float(energy.sum()) / 4 / (K / (a / 2)) == pytest.approx(MADELUNG_NACL, rel=1e-5)


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("charged", [False, True], ids=["neutral", "charged"])
def test_ewald_independent_of_alpha(damping, charged):
    q, pos, cell = random_cell_system(charged=charged)
    energies = [
        float(ewald_energies(q, pos, cell, alpha=alpha, accuracy=1e-10, damping=damping).sum())
        for alpha in (0.25, 0.35, 0.5, 0.7)
    ]
    assert np.ptp(energies) < 1e-7 * max(1.0, abs(energies[0]))


def test_per_atom_gaussian_widths():
    """(N,) widths: equal widths reproduce the scalar; mixed widths give erf(r/√(2(σi²+σj²)))/r and stay α-free."""
    q, pos, cell = random_cell_system()
    n = q.shape[0]
    same = ewald_energies(q, pos, cell, sigma=torch.full((n,), 0.6), accuracy=1e-10)
    assert torch.allclose(same, ewald_energies(q, pos, cell, sigma=0.6, accuracy=1e-10), atol=1e-12)
    widths = torch.linspace(0.4, 0.9, n)
    energies = [float(ewald_energies(q, pos, cell, sigma=widths, alpha=a, accuracy=1e-10).sum()) for a in (0.3, 0.6)]
    assert abs(energies[0] - energies[1]) < 1e-7
    pair = torch.tensor([[0.0, 0.0, 0.0], [1.3, 0.0, 0.0]])
    e = coulomb_energies(torch.tensor([0.5, -0.4]), pair, sigma=torch.tensor([0.5, 0.8])).sum()
    assert float(e) == pytest.approx(K * 0.5 * -0.4 * math.erf(1.3 / math.sqrt(2 * (0.25 + 0.64))) / 1.3, rel=1e-12)


def test_charged_cell_background_wigner():
    """One ion in a cubic box with a neutralising background: E = -ξ k q² / (2L), ξ = 2.837297."""
    for length in (7.0, 11.0):
        pos, cell = torch.zeros(1, 3), torch.eye(3) * length
        for q in (1.0, -2.0):
            e = ewald_energies(torch.tensor([q]), pos, cell, damping="gaussian", accuracy=1e-10).sum()
            assert float(e) == pytest.approx(-WIGNER_SC * K * q * q / (2 * length), rel=1e-8)


def test_charged_cell_background_explicit():
    """The background term is -π k Q² / (2 V α²): without it the energy would depend on α."""
    q, pos, cell = random_cell_system(charged=True)
    volume = float(torch.linalg.det(cell))
    total = float(q.sum())
    with_bg = {a: float(ewald_energies(q, pos, cell, alpha=a, accuracy=1e-10).sum()) for a in (0.3, 0.6)}
    without = {a: with_bg[a] + math.pi * K * total**2 / (2 * volume * a * a) for a in with_bg}
    assert abs(with_bg[0.3] - with_bg[0.6]) < 1e-7
    assert abs(without[0.3] - without[0.6]) > 1e-2
    # an explicit total charge of zero drops the term
    no_bg = ewald_energies(q, pos, cell, alpha=0.3, accuracy=1e-10, total_charge=torch.zeros(1)).sum()
    assert float(no_bg) == pytest.approx(without[0.3], abs=1e-9)


def test_against_torch_pme():
    torchpme = pytest.importorskip("torchpme")
    from matsim.core.neighbors import neighbor_list

    q, pos, cell = random_cell_system(n=12, seed=3)
    ours = ewald_energies(q, pos, cell, damping="none", accuracy=1e-10).sum()
    edges, shifts = neighbor_list(pos, cell, torch.ones(3, dtype=torch.bool), 9.0)
    half = edges[0] < edges[1]
    edges, shifts = edges[:, half], shifts[half]
    dist = torch.linalg.vector_norm(pos[edges[1]] - pos[edges[0]] + shifts @ cell, dim=1)
    calc = torchpme.EwaldCalculator(torchpme.CoulombPotential(smearing=1.0), lr_wavelength=0.3)
    phi = calc.forward(q.unsqueeze(1), cell, pos, edges.T, dist)
    theirs = K * (q.unsqueeze(1) * phi).sum()  # torch-pme's φ already carries the ½ of the pair sum
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


# ------------------------------------------------------------------------------------------------ molecules
@pytest.mark.parametrize("damping", DAMPINGS)
def test_molecule_kernels(damping):
    """Two charges: explicit kernel values; finite at r -> 0 when damped; 1/r at long range."""
    q = torch.tensor([0.8, -0.5])
    for r in (0.0, 0.7, 1.5, 8.0):
        if damping == "none" and r == 0.0:
            continue
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
        e = coulomb_energies(q, pos, damping=damping)
        assert torch.allclose(e[0], e[1])
        gamma = 2 * DEFAULT_SIGMA
        if damping == "gaussian":
            f = math.erf(r / gamma) / r if r > 0 else 2 / (math.sqrt(math.pi) * gamma)
        elif damping == "bamboo":
            x = (r - 2.2) / 2.2
            f = 1 / (2.2 * (1 + math.log1p(math.exp(18.7 * x)) / 18.7))
        else:
            f = 1 / r
        assert float(e.sum()) == pytest.approx(K * 0.8 * -0.5 * f, rel=1e-12)
        if r == 8.0:
            assert float(e.sum()) == pytest.approx(K * 0.8 * -0.5 / r, rel=1e-9)


@pytest.mark.parametrize("damping", ["gaussian", "bamboo"])
def test_molecule_limit_of_ewald(damping):
    """A neutral molecule in a big cubic cell: Ewald (tin-foil) = molecular value - 2π k μ² / (3V) + O(L⁻⁵).

    The remainder is the interaction with the images' quadrupoles, so residual × L⁵ must be constant.
    """
    atoms = molecule("CH3CH2OH")
    atoms.center()
    q = neutral_molecule_charges(atoms)
    pos = torch.tensor(atoms.positions)
    molecular = float(coulomb_energies(q, pos, damping=damping).sum())
    dipole = (q.unsqueeze(1) * pos).sum(0)
    scaled = []
    for length in (40.0, 60.0):
        cell = torch.eye(3) * length
        periodic = float(ewald_energies(q, pos + length / 2, cell, damping=damping, accuracy=1e-10).sum())
        correction = -2 * math.pi * K * float(dipole @ dipole) / (3 * length**3)
        assert periodic == pytest.approx(molecular + correction, abs=3e-6)
        scaled.append((periodic - molecular - correction) * length**5)
    assert scaled[0] == pytest.approx(scaled[1], rel=0.01)


def test_charge_gradient_is_potential():
    """E = ½ qᵀAq, so ∂E/∂q_i = φ_i = 2 E_i / q_i, molecules and cells alike."""
    q, pos, cell = random_cell_system()
    for fn in (lambda c: ewald_energies(c, pos, cell, accuracy=1e-10), lambda c: coulomb_energies(c, pos)):
        charges = q.clone().requires_grad_(True)
        energies = fn(charges)
        (grad,) = torch.autograd.grad(energies.sum(), charges)
        assert torch.allclose(grad, 2 * energies.detach() / q, atol=1e-10)


# ------------------------------------------------------------------------------------------------ derivatives
def _energy_and_derivatives(q, pos, cell, **kw):
    """Autograd forces and stress (strain applied to both positions and cell, as ForceField does)."""
    pos = pos.clone().requires_grad_(True)
    strain = torch.zeros(3, 3, dtype=pos.dtype, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    energy = ewald_energies(q, pos + pos @ sym, cell + cell @ sym, **kw).sum()
    d_pos, d_strain = torch.autograd.grad(energy, [pos, strain])
    return energy.detach(), -d_pos, d_strain / torch.linalg.det(cell)


@pytest.mark.parametrize("damping", ["gaussian", "bamboo"])
def test_forces_and_stress_finite_differences(damping):
    q, pos, cell = random_cell_system(n=8, charged=True)
    kw = dict(alpha=0.45, r_cut=10.0, k_cut=4.0, damping=damping)
    _, forces, stress = _energy_and_derivatives(q, pos, cell, **kw)
    h = 1e-5
    energy = lambda p, c: float(ewald_energies(q, p, c, **kw).sum())  # noqa: E731
    fd_forces = torch.zeros_like(pos)
    for i in range(pos.shape[0]):
        for d in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, d] += h
            minus[i, d] -= h
            fd_forces[i, d] = -(energy(plus, cell) - energy(minus, cell)) / (2 * h)
    assert torch.allclose(forces, fd_forces, atol=1e-6, rtol=1e-5)
    fd_stress = torch.zeros(3, 3, dtype=pos.dtype)
    volume = float(torch.linalg.det(cell))
    for a in range(3):
        for b in range(3):
            eps = torch.zeros(3, 3, dtype=pos.dtype)
            eps[a, b] = eps[b, a] = h / 2 if a != b else h
            up = energy(pos + pos @ eps, cell + cell @ eps)
            down = energy(pos - pos @ eps, cell - cell @ eps)
            fd_stress[a, b] = (up - down) / (2 * h) / volume
    assert torch.allclose(stress, fd_stress, atol=1e-7, rtol=1e-5)
    # the neighbor-list and k-set choices are made on detached coordinates: no spurious gradient terms
    assert torch.allclose(stress, stress.T, atol=1e-12)


def test_reused_pair_list_matches_fresh():
    """A ``pair_lists`` cache (reused real-space list with a skin) gives the energies and forces of a fresh list
    along an MD-like trajectory, also while the automatic real-space cutoff drifts with a straining cell."""
    q, pos, cell = random_cell_system(n=10, seed=3)
    pair_lists: dict = {}
    rng = np.random.default_rng(1)
    steps = 12
    for _ in range(steps):
        pos = pos + torch.tensor(rng.normal(scale=0.02, size=pos.shape))
        cell = cell * (1.0 + 1e-3 * rng.normal())
        results = []
        for cache in (pair_lists, None):
            p = pos.clone().requires_grad_(True)
            energies = ewald_energies(q, p, cell, pair_lists=cache)
            (grad,) = torch.autograd.grad(energies.sum(), p)
            results.append((energies.detach(), grad))
        assert torch.allclose(results[0][0], results[1][0], rtol=0, atol=1e-12)
        assert torch.allclose(results[0][1], results[1][1], rtol=0, atol=1e-12)
    assert pair_lists[0].n_builds < steps / 2


def test_invariance_translation_rotation():
    q, pos, cell = random_cell_system(n=9, seed=1)
    e0 = ewald_energies(q, pos, cell, accuracy=1e-10)
    shifted = ewald_energies(q, pos + torch.tensor([1.3, -0.7, 2.9]), cell, accuracy=1e-10)
    assert torch.allclose(e0, shifted, atol=1e-9)
    rot = torch.tensor(Rotation.random(random_state=4).as_matrix())
    rotated = ewald_energies(q, pos @ rot.T, cell @ rot.T, accuracy=1e-10)
    assert torch.allclose(e0, rotated, atol=1e-9)
    mol = molecule("CH3CH2OH")
    qm, pm = neutral_molecule_charges(mol), torch.tensor(mol.positions)
    em = coulomb_energies(qm, pm)
    assert torch.allclose(em, coulomb_energies(qm, pm @ rot.T + 3.0), atol=1e-12)


# ------------------------------------------------------------------------------------------------ dispatcher, batches
def test_dispatch_batch_equals_one_by_one():
    q_cell, pos_cell, cell = random_cell_system(n=6, seed=2)
    cell_atoms = Atoms("H6", positions=pos_cell.numpy(), cell=cell.numpy(), pbc=True)
    mol = molecule("H2O")
    ion = Atoms("Li", positions=[[0.0, 0.0, 0.0]])
    systems = [mol, cell_atoms, ion, mol]
    graph = AtomGraph.build(systems, dtype=torch.float64)
    q_mol = neutral_molecule_charges(mol)
    charges = torch.cat([q_mol, q_cell, torch.tensor([1.0]), q_mol])
    batched = electrostatic_energies(charges, graph, accuracy=1e-10)
    singles = torch.cat(
        [
            electrostatic_energies(q_mol, AtomGraph.build(mol, dtype=torch.float64)),
            electrostatic_energies(q_cell, AtomGraph.build(cell_atoms, dtype=torch.float64), accuracy=1e-10),
            torch.zeros(1, dtype=torch.float64),
            electrostatic_energies(q_mol, AtomGraph.build(mol, dtype=torch.float64)),
        ]
    )
    assert torch.allclose(batched, singles, atol=1e-10)
    # an all-molecule batch goes through one vectorised pair sum
    mols = AtomGraph.build([mol, mol], dtype=torch.float64)
    assert torch.allclose(electrostatic_energies(torch.cat([q_mol, q_mol]), mols), torch.cat([singles[:3]] * 2))


def test_mixed_pbc_is_rejected():
    slab = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.5]], cell=[5, 5, 20], pbc=[True, True, False])
    graph = AtomGraph.build(slab, dtype=torch.float64)
    with pytest.raises(ValueError, match="periodic along some directions"):
        electrostatic_energies(torch.tensor([0.3, -0.3]), graph)


def test_unknown_damping_rejected():
    with pytest.raises(ValueError, match="unknown damping"):
        coulomb_energies(torch.zeros(2), torch.zeros(2, 3), damping="yukawa")


def test_ewald_parameters_overrides():
    cell = torch.eye(3) * 20.0
    auto = ewald_parameters(cell, 800, accuracy=1e-6)
    s = math.sqrt(-math.log(1e-6))
    assert auto.r_cut == pytest.approx(s / auto.alpha) and auto.k_cut == pytest.approx(2 * auto.alpha * s)
    given = ewald_parameters(cell, 800, accuracy=1e-6, r_cut=9.0)
    assert given.alpha == pytest.approx(s / 9.0)
    full = ewald_parameters(cell, 800, alpha=0.3, r_cut=8.0, k_cut=2.0)
    assert (full.alpha, full.r_cut, full.k_cut) == (0.3, 8.0, 2.0)


# ------------------------------------------------------------------------------------------------ inside ForceField
class _FixedChargeCoulomb(Potential):
    """A potential whose energy is electrostatics of fixed charges (reads the strained graph.pos / graph.cell)."""

    def __init__(self, charges: torch.Tensor):
        super().__init__(cutoff=3.0, species=[1])
        self.register_buffer("charges", charges)
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=charges.dtype))

    def forward(self, graph):
        return {"energies": electrostatic_energies(self.charges, graph, alpha=0.45, r_cut=10.0, k_cut=4.0)}


def test_through_forcefield_stress():
    q, pos, cell = random_cell_system(n=8, seed=5)
    atoms = Atoms("H8", positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    model = ForceField(_FixedChargeCoulomb(q))
    graph = AtomGraph.build(atoms, cutoff=3.0, dtype=torch.float64)
    out = model(graph, compute_forces=True, compute_stress=True)
    _, forces, stress = _energy_and_derivatives(q, pos, cell, alpha=0.45, r_cut=10.0, k_cut=4.0)
    assert torch.allclose(out["forces"], forces, atol=1e-10)
    assert torch.allclose(out["stress"][0], stress, atol=1e-12)


# ------------------------------------------------------------------------------------------------ charge equilibration
def test_charge_equilibration_penalty_known_answer():
    """E = Σ χ_i q_i + ½ Σ J_i q_i²: ∂E/∂q_i = χ_i + J_i q_i, so the penalty is their variance per system."""
    chi = torch.tensor([1.0, 2.0, 4.0, -1.0, 1.0])
    hard = torch.tensor([2.0, 1.0, 1.0, 3.0, 3.0])
    batch = torch.tensor([0, 0, 0, 1, 1])
    q = torch.tensor([0.5, -0.5, 0.0, 0.2, -0.2], requires_grad=True)
    energy = torch.zeros(2).index_add(0, batch, chi * q + 0.5 * hard * q * q)
    # ∂E/∂q = [2.0, 1.5, 4.0 | -0.4, 0.4]; means 2.5, 0; squared deviations:
    expected = torch.tensor([0.25, 1.0, 2.25, 0.16, 0.16])
    assert torch.allclose(charge_equilibration_penalty(energy, q, batch, reduction="none"), expected)
    assert float(charge_equilibration_penalty(energy, q, batch).detach()) == pytest.approx(float(expected.mean()))
    per_system = charge_equilibration_penalty(energy, q, batch, reduction="system")
    assert torch.allclose(per_system, torch.tensor([3.5 / 3, 0.16]))
    # differentiable: a training step can push the penalty down
    loss = charge_equilibration_penalty(energy, q, batch)
    (grad,) = torch.autograd.grad(loss, q)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_charge_equilibration_penalty_vanishes_at_qeq():
    """QEq charges (minimum of χ·q + ½ J q² + Coulomb at fixed total charge) have equal ∂E/∂q_i: penalty = 0."""
    atoms = molecule("CH3CH2OH")
    pos = torch.tensor(atoms.positions)
    n = len(atoms)
    chi = torch.tensor([{1: 4.5, 6: 5.3, 8: 8.7}[z] for z in atoms.numbers], dtype=torch.float64)
    hard = torch.tensor([{1: 13.9, 6: 10.1, 8: 13.4}[z] for z in atoms.numbers], dtype=torch.float64)

    def energy(q):
        return (chi * q + 0.5 * hard * q * q).sum() + coulomb_energies(q, pos).sum()

    # E is quadratic in q: Hessian and gradient at 0 by autograd, then the constrained linear solve
    zero = torch.zeros(n, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(energy, zero)
    grad0 = torch.autograd.functional.jacobian(energy, zero)
    system = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    system[:n, :n], system[:n, n], system[n, :n] = hessian, -1.0, 1.0
    rhs = torch.cat([-grad0, torch.zeros(1, dtype=torch.float64)])
    q = torch.linalg.solve(system, rhs)[:n].requires_grad_(True)
    assert float(charge_equilibration_penalty(energy(q), q)) < 1e-20
    perturbed = (q.detach() + 0.05 * torch.randn(n, dtype=torch.float64)).requires_grad_(True)
    assert float(charge_equilibration_penalty(energy(perturbed), perturbed)) > 1e-3
