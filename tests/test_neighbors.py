"""Neighbor lists against a brute-force enumeration of periodic images (same pairs, same shift vectors)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from matsim.core.errors import StructureError
from matsim.core.neighbors import SkinHalfPairList, SkinNeighborList, neighbor_list, positive_shift


def brute_force_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> set[tuple]:
    """Every (i, j, S) with |pos[j] - pos[i] + S @ cell| < cutoff, enumerating enough images along periodic axes."""
    # |S @ A| >= sigma_min(A) |S| for the periodic rows A, and a pair within the cutoff has |S @ A| <= cutoff + extent.
    extent = float(np.linalg.norm(np.ptp(pos, axis=0))) if len(pos) else 0.0
    sigma_min = np.linalg.svd(cell[pbc], compute_uv=False).min() if pbc.any() else 1.0
    reach = [int(np.ceil((cutoff + extent) / sigma_min)) if pbc[k] else 0 for k in range(3)]
    pairs = set()
    for shift in itertools.product(*[range(-m, m + 1) for m in reach]):
        d = pos[None, :, :] + np.asarray(shift) @ cell - pos[:, None, :]
        ii, jj = np.nonzero(np.linalg.norm(d, axis=-1) < cutoff)
        for i, j in zip(ii, jj):
            if i != j or any(shift):
                pairs.add((int(i), int(j), *shift))
    return pairs


def random_system(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    n = int(rng.integers(1, 14))
    if kind == "orthorhombic":
        cell = np.diag(rng.uniform(2.0, 8.0, 3))
    elif kind == "triclinic":
        cell = np.diag(rng.uniform(3.0, 7.0, 3)) + rng.normal(scale=1.2, size=(3, 3))
    else:  # tiny cell, large cutoff: many periodic images
        cell = np.diag(rng.uniform(1.0, 2.0, 3)) + rng.normal(scale=0.3, size=(3, 3))
    pbc = rng.random(3) < 0.7 if kind != "tiny" else np.ones(3, dtype=bool)
    pos = rng.random((n, 3)) @ cell
    cutoff = float(rng.uniform(2.0, 4.5) if kind == "tiny" else rng.uniform(1.0, 6.0))
    return pos, cell, pbc, cutoff


@pytest.mark.parametrize("kind", ["orthorhombic", "triclinic", "tiny"])
def test_neighbor_list_matches_brute_force(kind: str) -> None:
    rng = np.random.default_rng({"orthorhombic": 1, "triclinic": 2, "tiny": 3}[kind])
    n_cells = 80
    for _ in range(n_cells):
        pos, cell, pbc, cutoff = random_system(rng, kind)
        edge_index, shifts = neighbor_list(
            torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc), cutoff
        )
        got = {(int(i), int(j), *map(int, s)) for (i, j), s in zip(edge_index.T.tolist(), shifts.round().long())}
        assert len(got) == edge_index.shape[1], "duplicate edges"
        assert got == brute_force_pairs(pos, cell, pbc, cutoff), (kind, pbc.tolist(), cutoff)


def test_non_periodic_molecule_with_zero_cell() -> None:
    rng = np.random.default_rng(4)
    pos = rng.random((9, 3)) * 4.0
    edge_index, shifts = neighbor_list(torch.tensor(pos), torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.bool), 2.5)
    assert not shifts.any()
    assert {(int(i), int(j), 0, 0, 0) for i, j in edge_index.T.tolist()} == brute_force_pairs(pos, np.zeros((3, 3)), np.zeros(3, bool), 2.5)


def test_edge_vectors_are_within_cutoff_and_lists_are_full() -> None:
    rng = np.random.default_rng(5)
    pos, cell, pbc, cutoff = random_system(rng, "triclinic")
    pos_t = torch.tensor(pos)
    edge_index, shifts = neighbor_list(pos_t, torch.tensor(cell), torch.ones(3, dtype=torch.bool), cutoff)
    vectors = pos_t[edge_index[1]] - pos_t[edge_index[0]] + shifts @ torch.tensor(cell)
    assert (vectors.norm(dim=1) < cutoff).all()
    forward = {(i, j, *s) for (i, j), s in zip(edge_index.T.tolist(), shifts.long().tolist())}
    assert all((j, i, *(-x for x in s)) in forward for (i, j, *s) in forward)


def test_degenerate_periodic_cell_is_a_clear_error() -> None:
    with pytest.raises(StructureError, match="zero-length cell vector"):
        neighbor_list(torch.zeros(2, 3), torch.zeros(3, 3), torch.ones(3, dtype=torch.bool), 3.0)


def _pairs_within(pos: torch.Tensor, cell: torch.Tensor, edges: tuple[torch.Tensor, torch.Tensor], cutoff: float) -> set:
    edge_index, shifts = edges
    r = (pos[edge_index[1]] - pos[edge_index[0]] + shifts @ cell).norm(dim=1)
    keep = r < cutoff
    return {(i, j, *s) for (i, j), s in zip(edge_index[:, keep].T.tolist(), shifts[keep].long().tolist())}


@pytest.mark.parametrize("strain_rate", [0.0, 2e-3])
def test_skin_list_never_misses_a_pair_and_reuses_the_list(strain_rate: float) -> None:
    """Random walks (and a slowly straining cell, as under a barostat): the cached list always contains every pair
    within the cutoff, and it is rebuilt far less often than every step."""
    rng = np.random.default_rng(6)
    n, length, cutoff = 60, 9.0, 3.0
    cell = torch.tensor(np.diag([length, length * 1.1, length * 0.9]) + rng.normal(scale=0.3, size=(3, 3)))
    pos = torch.tensor(rng.random((n, 3))) @ cell
    pbc = torch.ones(3, dtype=torch.bool)
    numbers = torch.ones(n, dtype=torch.long)
    cache = SkinNeighborList(cutoff, skin=1.0)
    steps = 120
    for _ in range(steps):
        pos = pos + torch.tensor(rng.normal(scale=0.03, size=(n, 3)))
        cell = cell * (1.0 + strain_rate * rng.normal())
        cached = _pairs_within(pos, cell, cache.update(pos, cell, pbc, numbers), cutoff)
        fresh = _pairs_within(pos, cell, neighbor_list(pos, cell, pbc, cutoff), cutoff)
        assert cached == fresh
    assert cache.n_builds < steps / 3


@pytest.mark.parametrize("strain_rate", [0.0, 2e-3])
def test_half_pair_list_never_misses_a_pair_with_a_drifting_cutoff(strain_rate: float) -> None:
    """The reused half list (Ewald real space, D3) holds each pair within the requested cutoff exactly once, also
    when the cutoff grows slowly with the cell (Ewald's under a barostat), and is rebuilt far less than every step."""
    rng = np.random.default_rng(7)
    n, length = 60, 9.0
    cell = torch.tensor(np.diag([length, length * 1.1, length * 0.9]) + rng.normal(scale=0.3, size=(3, 3)))
    pos = torch.tensor(rng.random((n, 3))) @ cell
    pbc = torch.ones(3, dtype=torch.bool)
    cache = SkinHalfPairList(skin=1.0)
    steps = 120
    for step in range(steps):
        pos = pos + torch.tensor(rng.normal(scale=0.03, size=(n, 3)))
        cell = cell * (1.0 + strain_rate * rng.normal())
        cutoff = 4.0 + 2e-3 * step
        edge_index, shifts = cache.update(pos, cell, pbc, cutoff)
        cached = _pairs_within(pos, cell, (edge_index, shifts), cutoff)
        full_edges, full_shifts = neighbor_list(pos, cell, pbc, cutoff)
        src, dst = full_edges
        keep = (src < dst) | ((src == dst) & positive_shift(full_shifts))
        fresh = _pairs_within(pos, cell, (full_edges[:, keep], full_shifts[keep]), cutoff)
        assert cached == fresh
        assert len(cached) == int(keep.sum())  # each unordered pair once
    assert cache.n_builds < steps / 3


def test_skin_list_rebuilds_when_atoms_change() -> None:
    cache = SkinNeighborList(2.0, skin=0.5)
    pos = torch.rand(5, 3, dtype=torch.float64) * 3
    cell, pbc = torch.eye(3, dtype=torch.float64) * 3, torch.ones(3, dtype=torch.bool)
    cache.update(pos, cell, pbc, torch.ones(5, dtype=torch.long))
    cache.update(pos, cell, pbc, torch.ones(5, dtype=torch.long))
    assert cache.n_builds == 1
    cache.update(pos, cell, pbc, torch.full((5,), 8, dtype=torch.long))
    assert cache.n_builds == 2
    cache.update(pos[:4], cell, pbc, torch.ones(4, dtype=torch.long))
    assert cache.n_builds == 3


@pytest.mark.gpu
def test_neighbor_list_on_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(7)
    pos, cell, pbc, cutoff = random_system(rng, "triclinic")
    cpu = neighbor_list(torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc), cutoff)
    gpu = neighbor_list(torch.tensor(pos).cuda(), torch.tensor(cell).cuda(), torch.tensor(pbc), cutoff)
    as_set = lambda e: {(i, j, *s) for (i, j), s in zip(e[0].T.tolist(), e[1].long().tolist())}
    assert gpu[0].is_cuda and as_set((gpu[0].cpu(), gpu[1].cpu())) == as_set(cpu)
