"""Batched periodic geometry in torch: lattices from (lengths, angles), fractional ↔ Cartesian, radius graphs.

Crystals of a batch are stored back to back: ``frac`` (N, 3) fractional coordinates, ``batch`` (N,) the crystal of
each atom, ``num_atoms`` (B,), lattices (B, 3, 3) with the cell vectors as rows (Å), so ``cart = frac @ lattice``.

:func:`periodic_radius_graph` is a vectorised all-pairs search over a block of periodic images, built for the
generative models: their decoder rebuilds the graph of a *noisy* structure at every training step and at every
Langevin step of sampling (thousands of times per batch), so it must run as a handful of batched kernels on the
GPU with no per-crystal Python loop. (:mod:`matsim.core.neighbors` calls vesin once per system: the right choice
for MD with large cells, the wrong one for thousands of tiny cells per step.) The tests check it against vesin.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "lattice_from_parameters",
    "frac_to_cart",
    "cart_to_frac",
    "minimum_image",
    "periodic_radius_graph",
    "image_shifts",
    "sigma_schedule",
    "MAX_IMAGES",
]

#: Largest number of periodic images searched along each cell vector on each side (a guard against degenerate
#: cells proposed by an untrained model: a 0.01 Å height would otherwise ask for 700 images).
MAX_IMAGES = 6


def lattice_from_parameters(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Cell matrices (B, 3, 3), rows a, b, c in Å, from lengths (B, 3) in Å and angles α, β, γ (B, 3) in degrees.

    Same orientation convention as pymatgen's ``Lattice.from_parameters`` (c along z, a in the xz-plane), so
    ``Structure(Lattice.from_parameters(*params), ...)`` and this matrix describe the same Cartesian positions.
    """
    radians = torch.deg2rad(angles)
    cos, sin = torch.cos(radians), torch.sin(radians)
    val = (cos[:, 0] * cos[:, 1] - cos[:, 2]) / (sin[:, 0] * sin[:, 1])
    gamma_star = torch.arccos(val.clamp(-1.0, 1.0))
    zeros = torch.zeros_like(val)
    a = torch.stack([lengths[:, 0] * sin[:, 1], zeros, lengths[:, 0] * cos[:, 1]], dim=1)
    b = torch.stack([-lengths[:, 1] * sin[:, 0] * torch.cos(gamma_star),
                     lengths[:, 1] * sin[:, 0] * torch.sin(gamma_star), lengths[:, 1] * cos[:, 0]], dim=1)
    c = torch.stack([zeros, zeros, lengths[:, 2]], dim=1)
    return torch.stack([a, b, c], dim=1)


def frac_to_cart(frac: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Cartesian positions (N, 3) in Å of fractional coordinates (N, 3) in the lattices (B, 3, 3) of ``batch``."""
    return torch.einsum("ni,nij->nj", frac, lattice[batch])


def cart_to_frac(cart: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates (N, 3) of Cartesian positions (N, 3) in Å (not wrapped into [0, 1))."""
    return torch.einsum("ni,nij->nj", cart, torch.linalg.inv(lattice)[batch])


def minimum_image(frac_delta: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Shortest Cartesian vector (N, 3) in Å among the periodic images of fractional displacements (N, 3).

    The displacement is first wrapped into [-0.5, 0.5) and then the 27 neighbouring images are compared, which is
    exact for every cell whose Niggli-reduced form is the cell itself and close otherwise.
    """
    wrapped = frac_delta - torch.round(frac_delta)
    images = _image_offsets(1, 1, 1, frac_delta)  # (27, 3)
    cart = torch.einsum("nki,nij->nkj", wrapped.unsqueeze(1) + images, lattice[batch])  # (N, 27, 3)
    best = torch.linalg.vector_norm(cart, dim=2).argmin(dim=1)
    return cart[torch.arange(cart.shape[0], device=cart.device), best]


def periodic_radius_graph(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    images: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, j, image) closer than ``cutoff`` within each crystal of a batch, periodic images included.

    Args:
        frac: (N, 3) fractional coordinates, crystals back to back.
        lattice: (B, 3, 3) cell vectors as rows, Å.
        num_atoms: (B,) atoms per crystal.
        cutoff: radius in Å.
        max_neighbors: keep only the nearest ``max_neighbors`` neighbours of each centre (CDVAE's cap of 20);
            ``None`` keeps them all. A cap breaks ties arbitrarily, so in a symmetric cell whose neighbour shell
            straddles the cap the graph (and anything built on it) is no longer exactly invariant to permutations
            and rotations; it also makes the model non-smooth in the positions.
        images: (K, 3) integer image shifts to search, from :func:`image_shifts` (default: computed here). Pass
            them when the lattices stay fixed over many calls (a Langevin sampler): it saves a host read per call.

    Returns:
        ``edge_index`` (2, E): centre i, neighbour j (global atom indices); ``edge_vec`` (E, 3): r_ij = x_j + S·L - x_i
        in Å (differentiable with respect to ``frac`` and ``lattice``). Self-pairs appear only for images S ≠ 0.
    """
    device = frac.device
    num_atoms = num_atoms.to(device=device, dtype=torch.long)
    ptr = torch.cumsum(num_atoms, 0) - num_atoms
    crystal = torch.repeat_interleave(torch.arange(num_atoms.shape[0], device=device), num_atoms)
    cart = frac_to_cart(frac, lattice, crystal)

    # all ordered pairs (i, j) inside each crystal
    pairs = num_atoms * num_atoms
    pair_crystal = torch.repeat_interleave(torch.arange(num_atoms.shape[0], device=device), pairs)
    local = torch.arange(pair_crystal.shape[0], device=device) - torch.repeat_interleave(torch.cumsum(pairs, 0) - pairs,
                                                                                          pairs)
    n = num_atoms[pair_crystal]
    i = ptr[pair_crystal] + local // n
    j = ptr[pair_crystal] + local % n

    if images is None:
        images = image_shifts(lattice, cutoff)
    images = images.to(frac)
    shift = torch.einsum("ki,bij->bkj", images, lattice)  # (B, K, 3)
    vec = (cart[j] - cart[i]).unsqueeze(1) + shift[pair_crystal]  # (P, K, 3)
    dist = torch.linalg.vector_norm(vec, dim=2)
    zero_image = (images == 0).all(dim=1)  # (K,)
    keep = (dist < cutoff) & ~((i == j).unsqueeze(1) & zero_image.unsqueeze(0))
    pair_index, _ = keep.nonzero(as_tuple=True)
    edge_vec = vec[keep]
    centre, neighbour = i[pair_index], j[pair_index]
    if max_neighbors is not None:
        order = torch.argsort(dist[keep])
        order = order[torch.sort(centre[order], stable=True).indices]  # grouped by centre, nearest first
        centre_sorted = centre[order]
        counts = torch.bincount(centre_sorted, minlength=frac.shape[0])
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.shape[0], device=device) - start[centre_sorted]
        order = order[rank < max_neighbors]
        centre, neighbour, edge_vec = centre[order], neighbour[order], edge_vec[order]
    return torch.stack([centre, neighbour]), edge_vec


def image_shifts(lattice: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Integer image shifts (K, 3) that reach every neighbour within ``cutoff`` (Å) in each lattice (B, 3, 3):
    along each cell vector, ceil(cutoff / height) images on each side for the thinnest cell of the batch (capped at
    :data:`MAX_IMAGES`). One host read."""
    with torch.no_grad():
        volume = torch.linalg.det(lattice).abs()
        cross = torch.stack([torch.linalg.cross(lattice[:, 1], lattice[:, 2]),
                             torch.linalg.cross(lattice[:, 2], lattice[:, 0]),
                             torch.linalg.cross(lattice[:, 0], lattice[:, 1])], dim=1)
        heights = volume.unsqueeze(1) / torch.linalg.vector_norm(cross, dim=2).clamp_min(1e-12)
        reach = torch.ceil(cutoff / heights.clamp_min(1e-6)).amax(dim=0).clamp(0, MAX_IMAGES)
    na, nb, nc = (int(x) for x in reach.tolist())
    return _image_offsets(na, nb, nc, lattice)


def _image_offsets(na: int, nb: int, nc: int, like: torch.Tensor) -> torch.Tensor:
    """Integer image shifts (K, 3) with |S_a| ≤ na, |S_b| ≤ nb, |S_c| ≤ nc, in the dtype and device of ``like``."""
    axes = [torch.arange(-k, k + 1, device=like.device, dtype=like.dtype) for k in (na, nb, nc)]
    return torch.cartesian_prod(*axes).reshape(-1, 3)


def sigma_schedule(begin: float, end: float, num: int) -> torch.Tensor:
    """Geometric noise levels (num,) from ``begin`` down to ``end`` (NCSN / CDVAE)."""
    if num == 1:
        return torch.tensor([float(end)])
    return torch.exp(torch.linspace(math.log(begin), math.log(end), num))
