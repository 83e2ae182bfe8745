"""ZBL repulsion: the formula, its switch-off at covalent distances, forces, and its place in bamboo."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.data import covalent_radii

from matsim.core.graph import AtomGraph
from matsim.models.forcefield import ForceField
from matsim.models.layers.repulsion import zbl_pair_energy
from test_bamboo import tiny_bamboo


def reference_zbl(r: np.ndarray, z_i: int, z_j: int) -> np.ndarray:
    """ZBL universal potential (eV), written out independently of the module."""
    a = 0.8854 * 0.529177 / (z_i**0.23 + z_j**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    return 14.399645 * z_i * z_j / r * phi


def envelope(x: np.ndarray) -> np.ndarray:
    u = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8
    return np.where(x < 1, u, 0.0)


def pair_energy(r: np.ndarray, z_i: int, z_j: int) -> np.ndarray:
    r_max = covalent_radii[z_i] + covalent_radii[z_j]
    as_tensor = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    n = len(r)
    return zbl_pair_energy(as_tensor(r), torch.full((n,), z_i), torch.full((n,), z_j),
                           torch.full((n,), r_max, dtype=torch.float64)).numpy()


def test_pair_energy_is_zbl_times_the_envelope() -> None:
    for z_i, z_j in [(3, 8), (1, 1), (15, 9), (16, 7)]:
        r_max = covalent_radii[z_i] + covalent_radii[z_j]
        r = np.linspace(0.2, 1.3 * r_max, 40)
        expected = reference_zbl(r, z_i, z_j) * envelope(r / r_max)
        np.testing.assert_allclose(pair_energy(r, z_i, z_j), expected, rtol=1e-5, atol=1e-12)  # constants to 6 digits


def test_switched_off_smoothly_at_the_covalent_distance() -> None:
    r_max = covalent_radii[3] + covalent_radii[8]
    beyond = pair_energy(np.array([r_max, r_max + 0.1, 3.0]), 3, 8)
    assert np.all(beyond == 0.0)
    # value, slope and curvature vanish at r_max: the energy just inside is O(h^3)
    h = 1e-3
    assert 0.0 < pair_energy(np.array([r_max - h]), 3, 8)[0] < 1e-5


def test_strongly_repulsive_and_monotonic_at_short_range() -> None:
    r_max = covalent_radii[3] + covalent_radii[8]
    r = np.linspace(0.3, r_max - 1e-3, 200)
    energy = pair_energy(r, 3, 8)
    assert np.all(np.diff(energy) < 0)
    assert pair_energy(np.array([0.4]), 3, 8)[0] > 100.0  # a Li+ 0.4 Å from an O costs >100 eV
    assert pair_energy(np.array([1.9]), 3, 8)[0] < 1e-3   # at a Li-O contact, nothing


def _li_water(li_o: float) -> Atoms:
    atoms = Atoms("OH2Li", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [-0.5, -0.6, li_o]])
    atoms.positions[3] = atoms.positions[0] + li_o * np.array([-0.5, -0.6, 0.62]) / np.linalg.norm([-0.5, -0.6, 0.62])
    atoms.info["charge"] = 1.0
    return atoms


def test_bamboo_adds_the_pair_sum_and_its_forces_are_gradients() -> None:
    torch.manual_seed(0)
    plain = tiny_bamboo(electrostatics=True)
    with_zbl = tiny_bamboo(electrostatics=True, repulsion=True)
    with_zbl.load_state_dict(plain.state_dict())
    atoms = _li_water(0.9)  # Li-O well inside its 1.94 Å covalent sum
    graph = AtomGraph.build([atoms], cutoff=plain.cutoff, dtype=torch.float64)
    out_plain, out_zbl = ForceField(plain)(graph), ForceField(with_zbl)(graph)
    distances = atoms.get_all_distances()
    expected = sum(float(pair_energy(np.array([distances[i, j]]), atoms.numbers[i], atoms.numbers[j])[0])
                   for i in range(len(atoms)) for j in range(i + 1, len(atoms)))
    assert expected > 10.0
    np.testing.assert_allclose(float(out_zbl["terms"]["repulsion"][0]),
                               float(out_zbl["energy"][0] - out_plain["energy"][0]), rtol=1e-10)
    np.testing.assert_allclose(float(out_zbl["terms"]["repulsion"][0]), expected, rtol=1e-10)
    # forces: -dE/dr by central differences
    forces = out_zbl["forces"].detach().numpy()
    step = 1e-5
    for atom, axis in [(3, 0), (3, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            g = AtomGraph.build([moved], cutoff=plain.cutoff, dtype=torch.float64)
            energies.append(float(ForceField(with_zbl)(g, compute_forces=False)["energy"][0]))
        np.testing.assert_allclose(forces[atom, axis], -(energies[0] - energies[1]) / (2 * step), rtol=1e-5, atol=1e-6)
