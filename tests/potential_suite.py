"""The conformance suite every matsim potential passes: subclass :class:`PotentialConformance`, name the subclass
``Test<Model>`` and implement :meth:`make_potential`. Physics checks run in float64 with fixed seeds.

Covered: invariance of energy / equivariance of forces under rotations, translations and permutations; forces
against finite differences; stress against finite strains; batch = one-by-one; supercell energy = n × cell energy;
smooth at the cutoff; edges beyond the cutoff contribute nothing; isolated atom = E0; float32 vs float64 parity; save/load identity; ASE calculator round trip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from matsim.calculator import MatSimCalculator
from matsim.core.graph import AtomGraph
from matsim.models import load_model, save_model
from matsim.models.base import Potential
from matsim.models.forcefield import ForceField
from systems import random_cell

#: Elements the suite's test systems use (H, Li, C, O, F, P: an electrolyte's).
SPECIES = (1, 3, 6, 8, 9, 15)
#: E0s given to the models under test, eV.
ATOMIC_ENERGIES = {1: -13.6, 3: -7.4, 6: -1030.0, 8: -2040.0, 9: -2710.0, 15: -9280.0}


def periodic_system(seed: int = 0, n: int = 10, box: float = 5.5) -> Atoms:
    """A triclinic periodic cell of random H/Li/C/O/F atoms with no pair closer than 1 Å."""
    rng = np.random.default_rng(seed)
    cell, positions = random_cell(rng, (box, box * 1.1, box * 0.95), 0.4, n, 1.0)
    atoms = Atoms(numbers=rng.choice([1, 3, 6, 8, 9], size=n), positions=positions, cell=cell, pbc=True)
    atoms.info["charge"] = 0.0
    return atoms


def molecular_system() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.info["charge"] = 0.0
    return atoms


def charged_cluster() -> Atoms:
    """Li+ next to an ethanol molecule: total charge +1."""
    atoms = molecule("CH3CH2OH") + Atoms("Li", positions=[[2.2, 0.5, 0.3]])
    atoms.info["charge"] = 1.0
    return atoms


def random_rotation(seed: int) -> np.ndarray:
    return Rotation.random(random_state=seed).as_matrix()


class PotentialConformance:
    """Mix-in test suite. Subclasses implement :meth:`make_potential` (a small model, random weights)."""

    #: Absolute tolerance on energies that must agree exactly up to rounding (eV, float64).
    energy_atol = 1e-8
    #: Relative tolerance of finite-difference checks.
    fd_rtol = 1e-5
    #: Absolute tolerance on stresses that must agree between a cell and its supercell (eV/Å³).
    extensive_stress_atol = 1e-9

    def make_potential(self, dtype: torch.dtype = torch.float64) -> Potential:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def evaluate(self, potential: Potential, atoms: Atoms | list[Atoms], stress: bool = False) -> dict:
        dtype = next(potential.parameters()).dtype
        graph = AtomGraph.build(atoms, cutoff=potential.cutoff, dtype=dtype)
        return ForceField(potential)(graph, compute_forces=True, compute_stress=stress)

    @pytest.fixture(scope="class")
    @classmethod
    def potential(cls) -> Potential:
        torch.manual_seed(0)
        return cls().make_potential(torch.float64).eval()

    # ------------------------------------------------------------------ symmetry
    @pytest.mark.parametrize("system", ["molecule", "periodic", "charged"])
    def test_rotation_translation_invariance(self, potential: Potential, system: str) -> None:
        atoms = {"molecule": molecular_system, "periodic": periodic_system, "charged": charged_cluster}[system]()
        ref = self.evaluate(potential, atoms)
        rotation = random_rotation(1)
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + np.array([0.3, -1.7, 2.2])
        moved.cell = atoms.cell.array @ rotation.T
        out = self.evaluate(potential, moved)
        assert torch.allclose(out["energy"], ref["energy"], atol=self.energy_atol, rtol=0)
        torch.testing.assert_close(out["forces"], ref["forces"] @ torch.tensor(rotation.T), atol=1e-8, rtol=1e-7)
        if "charges" in ref:
            torch.testing.assert_close(out["charges"], ref["charges"], atol=1e-9, rtol=0)

    def test_permutation_invariance(self, potential: Potential) -> None:
        atoms = periodic_system(2)
        order = np.random.default_rng(3).permutation(len(atoms))
        ref = self.evaluate(potential, atoms)
        out = self.evaluate(potential, atoms[order])
        assert torch.allclose(out["energy"], ref["energy"], atol=self.energy_atol, rtol=0)
        torch.testing.assert_close(out["forces"], ref["forces"][torch.tensor(order)], atol=1e-9, rtol=1e-7)

    # ------------------------------------------------------------------ derivatives
    @pytest.mark.parametrize("system", ["molecule", "periodic", "charged"])
    def test_forces_match_finite_differences(self, potential: Potential, system: str) -> None:
        atoms = {"molecule": molecular_system, "periodic": periodic_system, "charged": charged_cluster}[system]()
        forces = self.evaluate(potential, atoms)["forces"].numpy()
        h = 1e-5
        rng = np.random.default_rng(4)
        for atom in rng.choice(len(atoms), size=3, replace=False):
            for axis in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[atom, axis] += h
                minus.positions[atom, axis] -= h
                numeric = -(self.evaluate(potential, plus)["energy"] - self.evaluate(potential, minus)["energy"]).item() / (2 * h)
                assert numeric == pytest.approx(forces[atom, axis], rel=self.fd_rtol, abs=1e-6)

    def test_stress_matches_finite_strain(self, potential: Potential) -> None:
        atoms = periodic_system(5)
        stress = self.evaluate(potential, atoms, stress=True)["stress"][0].numpy()
        volume = atoms.get_volume()
        h = 1e-5
        for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / (2 if a != b else 1)
                strain[b, a] += sign * h / 2 if a != b else 0
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(self.evaluate(potential, deformed)["energy"].item())
            numeric = (energies[0] - energies[1]) / (2 * h) / volume
            assert numeric == pytest.approx(stress[a, b], rel=self.fd_rtol, abs=1e-7), (a, b)

    # ------------------------------------------------------------------ extensivity and batching
    def test_batch_equals_one_by_one(self, potential: Potential) -> None:
        systems = [molecular_system(), periodic_system(6), charged_cluster(), periodic_system(7, n=6)]
        batch = self.evaluate(potential, systems, stress=True)
        offset = 0
        for b, atoms in enumerate(systems):
            single = self.evaluate(potential, atoms, stress=True)
            torch.testing.assert_close(batch["energy"][b], single["energy"][0], atol=self.energy_atol, rtol=0)
            torch.testing.assert_close(batch["forces"][offset:offset + len(atoms)], single["forces"], atol=1e-9, rtol=1e-7)
            torch.testing.assert_close(batch["stress"][b], single["stress"][0], atol=1e-9, rtol=1e-7)
            offset += len(atoms)

    def test_supercell_energy_is_extensive(self, potential: Potential) -> None:
        atoms = periodic_system(8, n=6, box=4.0)  # smaller than a typical cutoff: many periodic images
        single = self.evaluate(potential, atoms, stress=True)
        supercell = self.evaluate(potential, atoms * (2, 1, 3), stress=True)
        torch.testing.assert_close(supercell["energy"][0], 6 * single["energy"][0], atol=1e-7, rtol=1e-10)
        torch.testing.assert_close(supercell["forces"][: len(atoms)], single["forces"], atol=1e-8, rtol=1e-7)
        torch.testing.assert_close(supercell["stress"][0], single["stress"][0], atol=self.extensive_stress_atol, rtol=1e-7)

    # ------------------------------------------------------------------ locality and limits
    def test_smooth_at_the_cutoff(self, potential: Potential) -> None:
        """Energy and forces are continuous where a pair crosses the cutoff (a jump would heat MD)."""
        rc, delta = potential.cutoff, 1e-6

        def dimer(r: float) -> Atoms:
            atoms = Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])
            atoms.info["charge"] = 0.0
            return atoms

        inside, outside = self.evaluate(potential, dimer(rc - delta)), self.evaluate(potential, dimer(rc + delta))
        largest_force = max(inside["forces"].abs().max().item(), outside["forces"].abs().max().item())
        jump = abs((inside["energy"] - outside["energy"]).item())
        assert jump <= 3 * delta * largest_force + 1e-10
        assert (inside["forces"] - outside["forces"]).abs().max().item() < 1e-4

    def test_edges_beyond_the_cutoff_contribute_nothing(self, potential: Potential) -> None:
        """An edge list that also holds pairs beyond the cutoff (a graph marked ``static_edges``, as the captured
        CUDA-graph training step uses) gives the same energy and forces: those pairs contribute nothing."""
        far = molecular_system()
        far.positions += np.array([potential.cutoff + 1.5, 0.4, -0.3])
        atoms = molecular_system() + far  # pairs at every distance up to well beyond the cutoff
        atoms.info["charge"] = 0.0
        dtype = next(potential.parameters()).dtype
        long = AtomGraph.build(atoms, cutoff=3 * potential.cutoff, dtype=dtype)
        long.static_edges = True
        short = AtomGraph.build(atoms, cutoff=potential.cutoff, dtype=dtype)
        assert long.edge_index.shape[1] == len(atoms) * (len(atoms) - 1) > short.edge_index.shape[1]
        out, ref = ForceField(potential)(long), ForceField(potential)(short)
        torch.testing.assert_close(out["energy"], ref["energy"], atol=self.energy_atol, rtol=0)
        torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-9, rtol=1e-7)

    def test_isolated_atom_energy_is_e0(self, potential: Potential) -> None:
        for z in SPECIES:
            atoms = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
            atoms.info["charge"] = 0.0
            out = self.evaluate(potential, atoms)
            assert out["energy"].item() == pytest.approx(ATOMIC_ENERGIES[z], abs=1e-10)
            assert torch.allclose(out["forces"], torch.zeros(1, 3, dtype=torch.float64))

    def test_float32_matches_float64(self) -> None:
        torch.manual_seed(0)
        reference = self.make_potential(torch.float64).eval()
        single = self.make_potential(torch.float64).eval()
        single.load_state_dict(reference.state_dict())
        single = single.float()
        atoms = periodic_system(9)
        e64 = self.evaluate(reference, atoms)
        e32 = self.evaluate(single, atoms)
        assert e32["energy"].dtype == torch.float32
        assert abs(e32["energy"].item() - e64["energy"].item()) < 1e-5 * max(1.0, abs(e64["energy"].item()))
        torch.testing.assert_close(e32["forces"].double(), e64["forces"], atol=1e-4, rtol=1e-3)

    # ------------------------------------------------------------------ persistence and ASE
    def test_save_load_identity(self, potential: Potential, tmp_path: Path) -> None:
        path = save_model(potential, tmp_path / "model.pt", statistics={"note": "suite"})
        loaded = load_model(path, device="cpu", dtype=torch.float64)
        atoms = periodic_system(10)
        ref, out = self.evaluate(potential, atoms, stress=True), self.evaluate(loaded, atoms, stress=True)
        for key in ("energy", "forces", "stress"):
            assert torch.equal(ref[key], out[key]), key
        assert loaded.statistics == {"note": "suite"}

    def test_ase_calculator_round_trip(self, potential: Potential) -> None:
        atoms = periodic_system(11)
        atoms.calc = MatSimCalculator(potential, device="cpu", dtype="float64")
        ref = self.evaluate(potential, atoms, stress=True)
        assert atoms.get_potential_energy() == pytest.approx(ref["energy"].item(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), atol=1e-10)
        s = ref["stress"][0].numpy()
        np.testing.assert_allclose(atoms.get_stress(), [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], atol=1e-12)
        # a small move reuses the neighbor list and still gives the right answer
        atoms.positions[0] += 0.05
        moved = self.evaluate(potential, atoms)
        assert atoms.get_potential_energy() == pytest.approx(moved["energy"].item(), abs=1e-10)
        assert atoms.calc.neighbors.n_builds == 1

    @pytest.mark.gpu
    def test_cuda_matches_cpu(self, potential: Potential) -> None:
        atoms = [periodic_system(12), charged_cluster()]
        cpu = self.evaluate(potential, atoms, stress=True)
        on_gpu = potential.to("cuda")
        try:
            graph = AtomGraph.build(atoms, cutoff=potential.cutoff, dtype=torch.float64, device="cuda")
            gpu = ForceField(on_gpu)(graph, compute_forces=True, compute_stress=True)
        finally:
            potential.to("cpu")
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=1e-8, rtol=1e-8)
