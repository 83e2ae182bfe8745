"""DFT-D3(BJ) layer: molecules against tad-dftd3, periodic cells, derivatives, cutoffs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units as ase_units
from ase.build import molecule
from scipy.spatial.transform import Rotation

from matsim.core.graph import AtomGraph
from matsim.core.neighbors import neighbor_list
from matsim.models.base import Potential
from matsim.models.forcefield import ForceField
from systems import random_cell
from matsim.models.layers.dispersion import (
    D3Dispersion,
    DispersionTerm,
    d3_energies,
    d3bj_parameters,
    dispersion_energies,
)

tad_dftd3 = pytest.importorskip("tad_dftd3")
from tad_mctc.units import length  # noqa: E402

AA2AU = float(length.AA2AU)
NO_PBC = torch.zeros(3, dtype=torch.bool)
ALL_PBC = torch.ones(3, dtype=torch.bool)


pytestmark = pytest.mark.usefixtures("float64_default")


def tad_reference(numbers, pos, functional, cutoff=None, dtype=torch.float64):
    """Per-atom energies (eV) from tad-dftd3 itself, two-body only (s9 = 0)."""
    param = tad_dftd3.param.get_functional_params(functional, damping="bj", dtype=dtype)
    param["s9"] = torch.tensor(0.0, dtype=dtype)
    kwargs = {} if cutoff is None else {"cutoff": cutoff}
    return tad_dftd3.dftd3(numbers, pos.to(dtype) * AA2AU, param, **kwargs) * ase_units.Hartree


def electrolyte_cell(n: int = 10, seed: int = 0) -> Atoms:
    """A small triclinic cell of H/Li/C/O/F/P atoms no closer than 1.1 Å."""
    rng = np.random.default_rng(seed)
    cell, pos = random_cell(rng, (6.0, 6.3, 5.7), 0.3, n, 1.1)
    return Atoms(numbers=rng.choice([1, 3, 6, 8, 9, 15], size=n), positions=pos, cell=cell, pbc=True)


def as_tensors(atoms: Atoms):
    return (
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.positions),
        torch.tensor(atoms.cell.array),
        torch.tensor(atoms.pbc),
    )


# ------------------------------------------------------------------------------------------------ molecules
@pytest.mark.parametrize("functional", ["pbe", "b3lyp", "wb97x", "r2scan"])
@pytest.mark.parametrize("name", ["CH3CH2OH", "C6H6", "CH3COOH", "PF3"])
def test_molecule_matches_tad_dftd3(functional, name):
    atoms = molecule(name)
    numbers, pos, _, _ = as_tensors(atoms)
    ours = d3_energies(numbers, pos, torch.zeros(3, 3), NO_PBC, functional=functional)
    reference = tad_reference(numbers, pos, functional)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-8)


def test_molecule_float32():
    atoms = molecule("CH3CH2OH")
    numbers, pos, _, _ = as_tensors(atoms)
    ours = d3_energies(numbers, pos.float(), torch.zeros(3, 3), NO_PBC)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), tad_reference(numbers, pos, "pbe"), rtol=1e-5, atol=1e-7)


def test_functional_parameters_by_name():
    assert d3bj_parameters("pbe") == pytest.approx({"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407})
    assert d3bj_parameters("B3LYP") == pytest.approx({"s6": 1.0, "s8": 1.9889, "a1": 0.3981, "a2": 4.4211})
    assert d3bj_parameters("wb97x") == pytest.approx({"s6": 1.0, "s8": 0.2641, "a1": 0.0, "a2": 5.4959})
    assert d3bj_parameters({"a1": 0.4, "a2": 5.0, "s8": 1.0})["s6"] == 1.0
    with pytest.raises(ValueError, match="unknown functional"):
        d3bj_parameters("not-a-functional")
    with pytest.raises(ValueError, match="missing"):
        d3bj_parameters({"a1": 0.4})


# ------------------------------------------------------------------------------------------------ periodic
def test_periodic_matches_tad_on_explicit_images():
    """Per-atom energies of a cell = tad-dftd3 on a cluster of all images that matter (same hard cutoffs)."""
    atoms = electrolyte_cell()
    numbers, pos, cell, pbc = as_tensors(atoms)
    cutoff, cn_cutoff = 7.0, 5.0
    ours = d3_energies(numbers, pos, cell, pbc, cutoff=cutoff, cn_cutoff=cn_cutoff, taper=0.0)
    # cluster: the cell, then every image within cutoff + cn_cutoff of it (their CNs need their own neighbors)
    edges, shifts = neighbor_list(pos, cell, pbc, cutoff + cn_cutoff + 0.5)
    keys = {(int(j), *map(int, s)) for j, s in zip(edges[1], shifts) if s.abs().sum() > 0}
    images = sorted(keys)
    index = torch.tensor([k[0] for k in images])
    image_shift = torch.tensor([k[1:] for k in images], dtype=pos.dtype)
    cluster_pos = torch.cat([pos, pos[index] + image_shift @ cell])
    cluster_numbers = torch.cat([numbers, numbers[index]])
    cut = tad_dftd3.Cutoff(cn=cn_cutoff * AA2AU, disp2=cutoff * AA2AU)
    reference = tad_reference(cluster_numbers, cluster_pos, "pbe", cutoff=cut)[: len(atoms)]
    assert torch.allclose(ours, reference, rtol=0, atol=1e-8)


def test_vacuum_cell_equals_molecule():
    atoms = molecule("CH3COOH")
    numbers, pos, _, _ = as_tensors(atoms)
    isolated = d3_energies(numbers, pos, torch.zeros(3, 3), NO_PBC)
    reference = tad_reference(numbers, pos, "pbe")
    cell = torch.eye(3) * 20.0  # > cutoff + molecule size: no image within reach
    periodic = d3_energies(numbers, pos + 10.0, cell, ALL_PBC)
    assert torch.allclose(periodic, isolated, atol=1e-12)
    assert torch.allclose(periodic, reference, atol=1e-8)


def test_supercell_is_n_times_cell():
    atoms = electrolyte_cell(seed=1)
    energy = float(d3_energies(*as_tensors(atoms)).sum())
    big = atoms.repeat((2, 1, 2))
    big_energy = float(d3_energies(*as_tensors(big)).sum())
    assert big_energy == pytest.approx(4 * energy, rel=1e-10)


def test_invariance_and_batching():
    atoms = electrolyte_cell(seed=2)
    numbers, pos, cell, pbc = as_tensors(atoms)
    e0 = d3_energies(numbers, pos, cell, pbc)
    rot = torch.tensor(Rotation.random(random_state=1).as_matrix())
    assert torch.allclose(e0, d3_energies(numbers, (pos + 0.7) @ rot.T, cell @ rot.T, pbc), atol=1e-12)
    mol = molecule("CH3CH2OH")
    graph = AtomGraph.build([mol, atoms, mol], dtype=torch.float64)
    batched = dispersion_energies(graph)
    e_mol = dispersion_energies(AtomGraph.build(mol, dtype=torch.float64))
    assert torch.allclose(batched, torch.cat([e_mol, e0, e_mol]), atol=1e-12)
    assert torch.allclose(DispersionTerm("pbe")(graph, None), batched, atol=1e-14)


def test_reused_pair_list_matches_fresh():
    """Along an MD-like trajectory with a straining cell, the module's reused (skin) pair list gives the energies and
    forces of a fresh list every step, and is rebuilt far less often than every step."""
    atoms = electrolyte_cell(n=12, seed=3)
    numbers, pos, cell, pbc = as_tensors(atoms)
    reused = D3Dispersion("pbe", cutoff=8.0, cn_cutoff=7.0)
    rng = np.random.default_rng(0)
    steps = 12
    for _ in range(steps):
        pos = pos + torch.tensor(rng.normal(scale=0.02, size=pos.shape))
        cell = cell * (1.0 + 1e-3 * rng.normal())
        results = []
        for module in (reused, D3Dispersion("pbe", cutoff=8.0, cn_cutoff=7.0)):
            p = pos.clone().requires_grad_(True)
            energies = module(numbers, p, cell, pbc)
            (grad,) = torch.autograd.grad(energies.sum(), p)
            results.append((energies.detach(), grad))
        assert torch.allclose(results[0][0], results[1][0], rtol=0, atol=1e-12)
        assert torch.allclose(results[0][1], results[1][1], rtol=0, atol=1e-12)
    assert reused._pair_lists[0].n_builds < steps / 2


# ------------------------------------------------------------------------------------------------ derivatives
def test_forces_and_stress_finite_differences():
    atoms = electrolyte_cell(n=8, seed=3)
    numbers, pos, cell, pbc = as_tensors(atoms)
    d3 = D3Dispersion("pbe", cutoff=8.0, cn_cutoff=6.0, taper=1.5)
    energy = lambda p, c: float(d3(numbers, p, c, pbc).sum())  # noqa: E731
    p = pos.clone().requires_grad_(True)
    strain = torch.zeros(3, 3, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    total = d3(numbers, p + p @ sym, cell + cell @ sym, pbc).sum()
    d_pos, d_strain = torch.autograd.grad(total, [p, strain])
    volume = float(torch.linalg.det(cell))
    h = 1e-5
    fd = torch.zeros_like(pos)
    for i in range(pos.shape[0]):
        for d in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, d] += h
            minus[i, d] -= h
            fd[i, d] = (energy(plus, cell) - energy(minus, cell)) / (2 * h)
    assert torch.allclose(d_pos, fd, rtol=1e-5, atol=1e-8)
    fd_stress = torch.zeros(3, 3)
    for a in range(3):
        for b in range(3):
            eps = torch.zeros(3, 3)
            eps[a, b] = eps[b, a] = h / 2 if a != b else h
            fd_stress[a, b] = (
                (energy(pos + pos @ eps, cell + cell @ eps) - energy(pos - pos @ eps, cell - cell @ eps)) / (2 * h)
            )
    assert torch.allclose(d_strain / volume, fd_stress / volume, rtol=1e-5, atol=1e-9)


class _D3Potential(Potential):
    def __init__(self):
        super().__init__(cutoff=3.0, species=[1, 3, 6, 8, 9, 15])
        self.d3 = D3Dispersion("pbe", cutoff=8.0, cn_cutoff=6.0, taper=1.5)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, graph):
        return {"energies": self.d3.from_graph(graph)}


def test_through_forcefield():
    """Inside a Potential the layer reads the strained pos/cell, so ForceField's stress is the strain derivative."""
    atoms = electrolyte_cell(n=8, seed=3)
    numbers, pos, cell, pbc = as_tensors(atoms)
    model = ForceField(_D3Potential())
    out = model(AtomGraph.build(atoms, cutoff=3.0, dtype=torch.float64), compute_forces=True, compute_stress=True)
    d3 = model.potential.d3
    h = 1e-5
    volume = float(torch.linalg.det(cell))
    eps = torch.zeros(3, 3)
    eps[0, 1] = eps[1, 0] = h / 2
    up = float(d3(numbers, pos + pos @ eps, cell + cell @ eps, pbc).sum())
    down = float(d3(numbers, pos - pos @ eps, cell - cell @ eps, pbc).sum())
    assert float(out["stress"][0, 0, 1]) == pytest.approx((up - down) / (2 * h) / volume, rel=1e-5)
    p = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d3(numbers, p, cell, pbc).sum(), p)
    assert torch.allclose(out["forces"], -grad, atol=1e-12)


# ------------------------------------------------------------------------------------------------ cutoffs
def test_smooth_at_cutoff():
    """A C–C pair: energy and force go to zero continuously at the cutoff with the taper, jump without it."""
    numbers = torch.tensor([6, 6])
    cell = torch.zeros(3, 3)

    def pair(r, taper):
        p = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], requires_grad=True)
        e = d3_energies(numbers, p, cell, NO_PBC, cutoff=10.0, cn_cutoff=5.0, taper=taper).sum()
        (g,) = torch.autograd.grad(e, p)
        return float(e), float(g[1, 0])

    e_in, f_in = pair(10.0 - 1e-6, 2.0)
    assert abs(e_in) < 1e-12 and abs(f_in) < 1e-8
    e_hard, _ = pair(10.0 - 1e-6, 0.0)
    assert e_hard < -1e-5  # the bare C6/r⁶ tail at 10 Å
    e_mid, f_mid = pair(9.0, 2.0)
    assert e_hard < e_mid < 0 and f_mid > 0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="taper"):
        D3Dispersion(cutoff=5.0, cn_cutoff=4.0, taper=4.5)
    with pytest.raises(ValueError, match="Z = 1"):
        d3_energies(torch.tensor([110]), torch.zeros(1, 3), torch.zeros(3, 3), NO_PBC)
