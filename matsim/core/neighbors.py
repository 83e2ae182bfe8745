"""Neighbor lists through vesin (C++ on CPU, CUDA on GPU), and a skin-based cache for MD.

Convention used everywhere in matsim: an edge ``(i, j)`` with integer cell shift ``S`` (a row vector) has the vector

    r_ij = positions[j] - positions[i] + S @ cell        (Å)

so ``edge_index[0]`` is the centre atom ``i`` and ``edge_index[1]`` its neighbor ``j``. Lists are *full*: both
``(i, j, S)`` and ``(j, i, -S)`` are present. Self-pairs appear only for periodic images (``S != 0``), which is how
cells smaller than the cutoff are handled.

vesin was chosen over ASE's and matscipy's lists because it is the fastest of the three on CPU (see
``benchmarks/neighbors.md``), runs on CUDA tensors, and handles triclinic, mixed-pbc and tiny cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import vesin.torch

from matsim.core.errors import StructureError

__all__ = ["neighbor_list", "batched_neighbor_list", "SkinNeighborList", "SkinHalfPairList"]


def neighbor_list(
    positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs closer than ``cutoff`` in one system.

    Args:
        positions: (N, 3) Cartesian positions in Å, any float dtype, CPU or CUDA.
        cell: (3, 3) cell vectors as rows in Å (ignored along non-periodic directions; may be zero if none is periodic).
        pbc: (3,) bool, periodicity along each cell vector.
        cutoff: radius in Å.

    Returns:
        ``edge_index`` (2, E) int64 and ``shifts`` (E, 3) integer-valued cell shifts with the dtype of ``positions``,
        on the device of ``positions``.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    pbc = torch.as_tensor(pbc, dtype=torch.bool).reshape(3).cpu()
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        return _empty_edges(positions)
    cell = cell.reshape(3, 3).to(dtype=positions.dtype, device=positions.device)
    if bool(pbc.any()):
        _check_cell(cell, pbc)
    calc = vesin.torch.NeighborList(cutoff=float(cutoff), full_list=True)
    vesin_pbc = pbc.to(positions.device) if bool(pbc.any()) else False
    i, j, shifts = calc.compute(positions.detach(), cell.detach(), vesin_pbc, quantities="ijS")
    edge_index = torch.stack([i.to(torch.long), j.to(torch.long)])
    return edge_index, shifts.to(positions.dtype)


def batched_neighbor_list(
    positions: torch.Tensor,
    cells: torch.Tensor,
    pbc: torch.Tensor,
    ptr: torch.Tensor,
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbor lists of several systems stored back to back.

    Args:
        positions: (N, 3) positions of all systems, system ``b`` at rows ``ptr[b]:ptr[b+1]``.
        cells: (B, 3, 3) cells; pbc: (B, 3) bool; ptr: (B + 1,) int offsets; cutoff in Å.

    Returns:
        ``edge_index`` (2, E) with global atom indices and ``shifts`` (E, 3), systems in order.
    """
    offsets = ptr.tolist()
    edges, shifts = [], []
    for b in range(len(offsets) - 1):
        start, stop = offsets[b], offsets[b + 1]
        e, s = neighbor_list(positions[start:stop], cells[b], pbc[b], cutoff)
        edges.append(e + start)
        shifts.append(s)
    if not edges:
        return _empty_edges(positions)
    return torch.cat(edges, dim=1), torch.cat(shifts, dim=0)


def _empty_edges(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(2, 0, dtype=torch.long, device=positions.device),
        torch.zeros(0, 3, dtype=positions.dtype, device=positions.device),
    )


def _check_cell(cell: torch.Tensor, pbc: torch.Tensor) -> None:
    """A periodic direction needs a non-degenerate cell vector that is independent of the others."""
    rows = cell[pbc.to(cell.device)]
    lengths = torch.linalg.vector_norm(rows, dim=1)
    if bool((lengths < 1e-8).any()):
        raise StructureError("a periodic direction has a zero-length cell vector; set pbc=False there or give the cell")
    if bool(pbc.all()) and abs(float(torch.linalg.det(cell))) < 1e-8:
        raise StructureError("the periodic cell has zero volume (its vectors are linearly dependent)")


@dataclass
class _Reference:
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    numbers: torch.Tensor
    max_shift: torch.Tensor  # (3,) bound on |S_k| for any pair that can come within the cutoff


class SkinNeighborList:
    """A neighbor list built at ``cutoff + skin`` and reused until it could have missed a pair.

    It is rebuilt when the atoms, their number, the pbc or the atomic numbers change, or when the largest possible
    change of any pair distance exceeds ``skin``. That bound is ``2 max_i |Δr_i| + Σ_k |S_k|max |Δcell_k|`` (the
    second term covers cell changes under a barostat), so the list always contains every pair within ``cutoff``.
    Consumers must ignore pairs beyond ``cutoff`` (smooth envelopes do; attention models mask them).

    Example::

        nl = SkinNeighborList(cutoff=5.0, skin=1.0)
        edge_index, shifts = nl.update(positions, cell, pbc, numbers)   # (2, E), (E, 3)
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._reference: _Reference | None = None
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, numbers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges of the current configuration at ``cutoff + skin`` (rebuilt only when needed)."""
        positions = positions.detach()
        cell = cell.detach().reshape(3, 3).to(positions)
        pbc = torch.as_tensor(pbc, dtype=torch.bool).reshape(3).cpu()
        if self._edges is None or self._needs_rebuild(positions, cell, pbc, numbers):
            self._edges = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._reference = _Reference(
                positions.clone(), cell.clone(), pbc.clone(), numbers.detach().clone(), self._max_shift(positions, cell, pbc)
            )
            self.n_builds += 1
        return self._edges

    def _max_shift(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
        """(3,) bound on |S_k| for any pair within ``cutoff + skin`` (:func:`_max_shift`)."""
        return _max_shift(positions, cell, pbc, self.cutoff + self.skin)

    def _needs_rebuild(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, numbers: torch.Tensor
    ) -> bool:
        ref = self._reference
        assert ref is not None
        if positions.shape != ref.positions.shape or not torch.equal(pbc, ref.pbc):
            return True
        if not torch.equal(numbers.detach().to(ref.numbers.device), ref.numbers):
            return True
        if positions.shape[0] == 0:
            return False
        return bool(_drift_bound(ref, positions, cell) > self.skin)


class SkinHalfPairList:
    """Each unordered pair once within a ``cutoff`` given per call, reused between calls with a skin.

    For terms that need their own, longer-ranged list on every evaluation (the Ewald real-space sum, D3 dispersion):
    a fresh vesin list at 8-12 Å costs more than the term itself in an MD step. The list is built at
    ``cutoff + skin`` and kept while it must still hold every pair within the requested ``cutoff``, i.e. while the
    bound of :class:`SkinNeighborList`, ``2 max_i |Δr_i| + Σ_k |S_k|max |Δcell_k|``, stays below
    ``built radius - cutoff`` (so a cutoff that drifts with the cell, as Ewald's does under a barostat, reuses the
    list too). It is rebuilt when the number of atoms, the pbc, the device or the dtype change. Consumers must drop
    the pairs beyond ``cutoff``; which pairs lie inside never depends on the list's history.

    Pairs are ``(i, j, S)`` with ``i < j``, or ``i == j`` (a periodic self-image) with the first non-zero shift
    component positive; vectors ``r_ij = positions[j] - positions[i] + S @ cell``.
    """

    def __init__(self, skin: float = 1.0) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.skin = float(skin)
        self.n_builds = 0
        self._radius = 0.0
        self._reference: _Reference | None = None
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Half list ``edge_index`` (2, E) and ``shifts`` (E, 3) holding every pair closer than ``cutoff``."""
        positions = positions.detach()
        cell = cell.detach().reshape(3, 3).to(positions)
        pbc = torch.as_tensor(pbc, dtype=torch.bool).reshape(3).cpu()
        if self._pairs is None or self._needs_rebuild(positions, cell, pbc, float(cutoff)):
            self._radius = float(cutoff) + self.skin
            edge_index, shifts = neighbor_list(positions, cell, pbc, self._radius)
            src, dst = edge_index
            keep = (src < dst) | ((src == dst) & positive_shift(shifts))
            self._pairs = edge_index[:, keep], shifts[keep]
            empty = torch.zeros(0, dtype=torch.long, device=positions.device)
            self._reference = _Reference(positions.clone(), cell.clone(), pbc.clone(), empty,
                                         _max_shift(positions, cell, pbc, self._radius))
            self.n_builds += 1
        return self._pairs

    def _needs_rebuild(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> bool:
        ref = self._reference
        assert ref is not None
        margin = self._radius - cutoff
        if margin < 0 or positions.shape != ref.positions.shape or not torch.equal(pbc, ref.pbc):
            return True
        if positions.device != ref.positions.device or positions.dtype != ref.positions.dtype:
            return True
        if positions.shape[0] == 0:
            return False
        return bool(_drift_bound(ref, positions, cell) > margin)


def _drift_bound(ref: _Reference, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Upper bound (Å) on how much any pair distance changed since ``ref``: ``2 max_i |Δr_i| + Σ_k |S_k|max
    |Δcell_k|`` (atoms moving towards each other, plus the periodic images carried by a changing cell)."""
    displacement = torch.linalg.vector_norm(positions - ref.positions, dim=1).max()
    cell_change = torch.linalg.vector_norm(cell - ref.cell, dim=1)
    return 2.0 * displacement + (ref.max_shift * cell_change).sum()


def positive_shift(shifts: torch.Tensor) -> torch.Tensor:
    """Whether the first non-zero component of each integer shift (E, 3) is positive (one of S, -S)."""
    s0, s1, s2 = shifts.unbind(1)
    return (s0 > 0) | ((s0 == 0) & (s1 > 0)) | ((s0 == 0) & (s1 == 0) & (s2 > 0))


def _max_shift(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, radius: float) -> torch.Tensor:
    """(3,) bound on |S_k| for any pair within ``radius``.

    From r_ij = p_j - p_i + S A (A: periodic cell rows), |S A| <= radius + D with D the extent of the positions,
    and S = (S A) A⁺ gives |S_k| <= (radius + D) ‖A⁺[:, k]‖.
    """
    bound = torch.zeros(3, dtype=positions.dtype, device=positions.device)
    periodic = pbc.to(positions.device)
    if not bool(pbc.any()) or positions.shape[0] == 0:
        return bound
    extent = torch.linalg.vector_norm(positions.max(dim=0).values - positions.min(dim=0).values)
    column_norms = torch.linalg.vector_norm(torch.linalg.pinv(cell[periodic]), dim=0)
    bound[periodic] = (radius + extent) * column_norms
    return bound
