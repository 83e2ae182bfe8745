"""BAMBOO-style transformer: the conformance suite plus charge conservation."""

from __future__ import annotations

import pytest
import torch
from ase import Atoms

from matsim.core.graph import AtomGraph
from matsim.models import create
from matsim.models.forcefield import ForceField
from potential_suite import ATOMIC_ENERGIES, SPECIES, PotentialConformance, charged_cluster, molecular_system, periodic_system


def tiny_bamboo(dtype: torch.dtype = torch.float64, **overrides) -> torch.nn.Module:
    hyperparameters = dict(
        cutoff=4.0, species=list(SPECIES), atomic_energies=ATOMIC_ENERGIES, channels=8, l_max=1, num_layers=2,
        num_heads=2, num_radial=6, radial_hidden=16, avg_num_neighbors=8.0, energy_scale=2.0,
    )
    hyperparameters.update(overrides)
    return create("bamboo", **hyperparameters).to(dtype)


class TestBamboo(PotentialConformance):
    def make_potential(self, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
        return tiny_bamboo(dtype)


class TestBambooLmax2(PotentialConformance):
    def make_potential(self, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
        return tiny_bamboo(dtype, l_max=2, num_layers=1)


def test_charges_sum_to_each_systems_total_charge() -> None:
    torch.manual_seed(1)
    model = tiny_bamboo()
    systems = [molecular_system(), charged_cluster(), periodic_system(3)]
    anion = Atoms("F", positions=[[0, 0, 0]])
    anion.info["charge"] = -1.0
    systems.append(anion)
    graph = AtomGraph.build(systems, cutoff=model.cutoff, dtype=torch.float64)
    charges = ForceField(model)(graph)["charges"]
    totals = torch.zeros(4, dtype=torch.float64).index_add(0, graph.system_index(), charges)
    torch.testing.assert_close(totals, torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert charges.std() > 0  # charges are predicted, not uniform


class TestBambooElectrostatics(PotentialConformance):
    """Learned charges + Gaussian-damped Coulomb (molecules) / Ewald (periodic cells)."""

    # Ewald sums are truncated at a relative accuracy of 1e-6 with parameters chosen per cell, so a cell and its
    # supercell agree to that accuracy, not to rounding: 1e-8 eV/Å³ is 2e-6 GPa.
    extensive_stress_atol = 1e-8

    def make_potential(self, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
        return tiny_bamboo(dtype, electrostatics=True)


def test_ewald_term_of_rock_salt_gives_the_madelung_constant() -> None:
    from ase.build import bulk

    from matsim.core.units import COULOMB_EV_A
    from matsim.models.bamboo import CoulombTerm

    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a, cubic=True)
    graph = AtomGraph.build(atoms, dtype=torch.float64)
    charges = torch.tensor([1.0 if z == 11 else -1.0 for z in atoms.numbers], dtype=torch.float64)
    energy_per_pair = CoulombTerm(sigma=0.0)(graph, charges).sum().item() / (len(atoms) / 2)
    madelung = -energy_per_pair * (a / 2) / COULOMB_EV_A
    assert madelung == pytest.approx(1.747565, rel=1e-6)


def test_charge_equilibration_penalty_reaches_the_charges() -> None:
    from matsim.models.layers.electrostatics import charge_equilibration_penalty

    torch.manual_seed(2)
    model = tiny_bamboo(electrostatics=True)
    graph = AtomGraph.build([molecular_system(), charged_cluster()], cutoff=model.cutoff, dtype=torch.float64)
    out = ForceField(model)(graph, compute_forces=True, training=True)
    penalty = charge_equilibration_penalty(out["terms"]["coulomb"], out["charges"], graph.system_index())
    penalty.backward()
    assert penalty.item() > 0
    assert model.charge_head[0].weight.grad.abs().sum() > 0


class TestBambooFull(PotentialConformance):
    """All four terms: short range + Coulomb/Ewald of the learned charges + D3(BJ) dispersion + ZBL repulsion."""

    extensive_stress_atol = 1e-8  # Ewald accuracy, as above

    def make_potential(self, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
        return tiny_bamboo(dtype, electrostatics=True, dispersion="b3lyp", repulsion=True)
