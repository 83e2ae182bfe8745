"""The EScAIP-style neighbor-attention potential: the shared conformance suite plus its own checks (padding and
masking, neighbor overflow, the direct-force head, a training smoke test) and the shared radial layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read

from matsim.core.errors import StructureError
from matsim.core.graph import AtomGraph
from matsim.models import create
from matsim.models.escaip import EScAIP
from matsim.models.forcefield import ForceField
from matsim.models.layers import BesselBasis, PolynomialEnvelope
from potential_suite import ATOMIC_ENERGIES, SPECIES, PotentialConformance, periodic_system, random_rotation


pytestmark = pytest.mark.usefixtures("one_thread")

ETHANOL = Path("/work/shared/data/rmd17_ethanol/train.xyz")

#: Tiny model used throughout (the densest suite system has 36 neighbors within 4 Å).
TINY = dict(cutoff=4.0, species=list(SPECIES), atomic_energies=ATOMIC_ENERGIES, hidden=16, num_layers=2, num_heads=4,
            num_radial=8, max_neighbors=48, l_max_angular=2, angular_channels=4, avg_num_neighbors=15.0)


def tiny(dtype: torch.dtype = torch.float64, **overrides) -> EScAIP:
    return create("escaip", **{**TINY, **overrides}).to(dtype)


def run(potential: EScAIP, atoms, stress: bool = False, forces: bool = True) -> dict:
    dtype = next(potential.parameters()).dtype
    graph = AtomGraph.build(atoms, cutoff=potential.cutoff, dtype=dtype)
    return ForceField(potential)(graph, compute_forces=forces, compute_stress=stress)

class TestEscaip(PotentialConformance):
    def make_potential(self, dtype: torch.dtype = torch.float64) -> EScAIP:
        return tiny(dtype)


# ---------------------------------------------------------------------- padding and masking
def test_padding_width_does_not_change_the_result() -> None:
    """48 or 64 slots, static or batch-sized padding: the same energies, forces and stress (padding is masked)."""
    atoms = periodic_system(8, n=6, box=4.0)  # up to 36 neighbors per atom
    reference = tiny(max_neighbors=64, static_padding=True).eval()
    ref = run(reference, atoms, stress=True)
    for overrides in ({"max_neighbors": 48, "static_padding": True}, {"max_neighbors": 48}, {"max_neighbors": 64}):
        other = tiny(**overrides).eval()
        other.load_state_dict(reference.state_dict())
        out = run(other, atoms, stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=1e-10, msg=f"{key} with {overrides}")


@pytest.mark.parametrize("training", [False, True])
def test_smooth_when_a_neighbor_leaves_a_crowded_shell(training: bool) -> None:
    """A token fading out at the cutoff must not disturb the attention among the remaining neighbors."""
    potential = tiny().train(training)
    rc, delta = potential.cutoff, 1e-6

    def cluster(r: float) -> Atoms:  # F sees only C (at distance r); C also sees O and H
        return Atoms("COHF", positions=[[0, 0, 0], [1.4, 0, 0], [0, 1.1, 0], [-r, 0, 0]])

    inside, outside = run(potential, cluster(rc - delta)), run(potential, cluster(rc + delta))
    largest_force = max(inside["forces"].abs().max().item(), outside["forces"].abs().max().item())
    assert abs((inside["energy"] - outside["energy"]).item()) <= 3 * delta * largest_force + 1e-10
    assert (inside["forces"] - outside["forces"]).abs().max().item() < 1e-6
    assert outside["forces"][:3].abs().max() > 1e-3  # the C-O-H part does interact


def test_train_and_eval_kernels_agree() -> None:
    """train() runs attention on the math kernel (twice differentiable), eval() on the fused ones: same numbers."""
    potential = tiny()
    atoms = periodic_system(4)
    fused = run(potential.eval(), atoms, stress=True)
    math = run(potential.train(), atoms, stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(math[key], fused[key], atol=1e-10, rtol=1e-9)


def test_neighbor_overflow_policies() -> None:
    atoms = periodic_system(8, n=6, box=4.0)
    with pytest.raises(StructureError, match="max_neighbors"):
        run(tiny(max_neighbors=20), atoms)
    weights = tiny().state_dict()

    def truncating(**overrides) -> EScAIP:
        potential = tiny(max_neighbors=20, **overrides)
        potential.load_state_dict(weights)
        return potential

    with pytest.warns(UserWarning, match="nearest"):
        warned = run(truncating(neighbor_overflow="warn"), atoms)
    for static in (False, True):
        out = run(truncating(neighbor_overflow="truncate", static_padding=static), atoms)
        assert torch.isfinite(out["forces"]).all()
        torch.testing.assert_close(out["energy"], warned["energy"], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="neighbor_overflow"):
        tiny(neighbor_overflow="drop")


def test_compiled_forcefield_matches_eager_and_keeps_one_state_dict() -> None:
    """ForceField(compile=...) traces the whole model with torch.compile (graph breaks at the host read-backs):
    energies, forces and stress equal the eager ones on two box sizes, training calls fall back to the eager model,
    and the compiled wrapper adds nothing to the state dict. The
    ``aot_eager`` backend runs the traced graphs without code generation (GPUs use Inductor)."""
    potential = tiny().eval()
    eager, compiled = ForceField(potential), ForceField(potential, compile="aot_eager")
    for atoms in (periodic_system(4), periodic_system(5, n=5)):
        graph = AtomGraph.build(atoms, cutoff=potential.cutoff, dtype=torch.float64)
        ref = eager(graph, compute_forces=True, compute_stress=True)
        out = compiled(graph, compute_forces=True, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(out[key], ref[key], atol=1e-12, rtol=1e-12)
    trained = compiled(graph, compute_forces=True, training=True)
    assert trained["forces"].requires_grad  # double-backward graph: the eager model ran
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_models_that_cannot_be_compiled_say_so() -> None:
    from matsim.core.errors import ConfigError

    bamboo = create("bamboo", cutoff=4.0, species=list(SPECIES), channels=8, num_layers=1)
    with pytest.raises(ConfigError, match="torch.compile"):
        ForceField(bamboo, compile=True)
    with pytest.raises(ConfigError, match="CUDA"):  # Inductor fails on escaip for the CPU (torch 2.13)
        ForceField(tiny(), compile=True)


# ---------------------------------------------------------------------- direct forces
def test_direct_force_head_is_equivariant() -> None:
    potential = tiny(direct_forces=True).eval()
    assert potential.direct_forces and not EScAIP.direct_forces
    atoms = periodic_system(3)
    out = run(potential, atoms)
    assert out["forces"].shape == (len(atoms), 3)
    assert out["forces"].abs().max() > 0
    rotation = random_rotation(2)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([1.0, -2.0, 0.5])
    moved.cell = atoms.cell.array @ rotation.T
    rotated = run(potential, moved)
    torch.testing.assert_close(rotated["forces"], out["forces"] @ torch.tensor(rotation.T), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(rotated["energy"], out["energy"], atol=1e-8, rtol=0)
    single = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    assert torch.equal(run(potential, single)["forces"], torch.zeros(1, 3, dtype=torch.float64))


# ---------------------------------------------------------------------- training smoke test
def test_energy_loss_decreases_on_ethanol() -> None:
    frames = read(ETHANOL, index=":6")
    targets = torch.tensor([a.get_potential_energy() for a in frames])
    # a per-atom shift 0.05 eV off (0.45 eV per frame): the network must learn to correct it through the neighbor
    # tokens (an offset is all 30 steps can learn; the ~0.2 eV conformational spread takes ~100+ steps)
    shift = float(targets.mean()) / len(frames[0]) + 0.05
    torch.manual_seed(0)
    potential = create("escaip", cutoff=4.0, species=[1, 6, 8], hidden=16, num_layers=2, num_radial=8,
                       max_neighbors=16, l_max_angular=2, angular_channels=4, avg_num_neighbors=8.0,
                       energy_shift=shift).double()
    graph = AtomGraph.build(frames, cutoff=potential.cutoff, dtype=torch.float64)
    forcefield = ForceField(potential)
    optimizer = torch.optim.Adam(potential.parameters(), lr=3e-3)

    def energy_loss() -> torch.Tensor:
        return ((forcefield(graph, compute_forces=False, training=True)["energy"] - targets) ** 2).mean()

    with torch.no_grad():
        initial = energy_loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = energy_loss()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = energy_loss().item()
    assert final < 0.5 * initial, (initial, final)

    # a force loss trains too (double backward through the shared ForceField)
    reference_forces = torch.tensor(np.concatenate([a.get_forces() for a in frames]))
    optimizer.zero_grad()
    out = forcefield(graph, compute_forces=True, training=True)
    ((out["forces"] - reference_forces) ** 2).mean().backward()
    assert potential.layers[0].qk.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- shared radial layers
@pytest.mark.parametrize("p", [2, 5, 6, 8])
def test_polynomial_envelope(p: int) -> None:
    cutoff = 3.0
    envelope = PolynomialEnvelope(cutoff, p)
    r = torch.linspace(0.01, 1.2 * cutoff, 500, dtype=torch.float64)
    x = r / cutoff
    expanded = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    torch.testing.assert_close(envelope(r), torch.where(x < 1, expanded, torch.zeros_like(x)), atol=1e-13, rtol=0)
    # value, slope and curvature vanish at the cutoff; positive just inside (full relative precision in float32)
    at = torch.tensor([cutoff], dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(envelope(at), at, create_graph=True)
    (d2,) = torch.autograd.grad(d1, at)
    assert envelope(at).item() == 0 and abs(d1.item()) < 1e-12 and abs(d2.item()) < 1e-12
    near = torch.tensor([cutoff * (1 - 1e-3), cutoff * (1 - 1e-5)], dtype=torch.float32)
    torch.testing.assert_close(envelope(near).double(), envelope(near.double()), atol=0, rtol=1e-3)
    assert (envelope(near) > 0).all()


def test_bessel_basis() -> None:
    basis = BesselBasis(6, 4.0, trainable=True)
    r = torch.tensor([0.5, 1.0, 4.0])
    values = basis(r)
    assert values.shape == (3, 6)
    assert values[2].abs().max() < 1e-6  # every function vanishes at the cutoff
    assert values[1, 0].item() == pytest.approx((2 / 4.0) ** 0.5 * np.sin(np.pi / 4), rel=1e-6)
    assert isinstance(basis.frequencies, torch.nn.Parameter)
    assert not isinstance(BesselBasis(6, 4.0).frequencies, torch.nn.Parameter)
