"""DFT-D3(BJ) dispersion as per-atom energies, differentiable, for molecules and periodic cells.

Route
-----
tad-dftd3 0.7.0 (checked on this machine) evaluates D3 on dense (..., nat, nat) distance matrices of *finite*
structures: ``dftd3(numbers, positions, param, cutoff=Cutoff(...))`` has no cell, no pbc and no way to pass a pair
list. So the periodic model is assembled here over a vesin neighbor list (pairs built on detached coordinates,
vectors recomputed from the differentiable ``pos``/``cell``: r_ij = pos[j] - pos[i] + S @ cell), from tad-dftd3's
own reference data and model functions:

- coordination numbers with the D3 counting function (``tad_mctc`` ``exp_count``, k1 = 16, covalent radii
  ``COV_D3`` including the 4/3 factor), summed over the pair list within ``cn_cutoff``;
- Gaussian reference weights ``tad_dftd3.model.weight_references`` and C6 interpolation from
  ``tad_dftd3.reference.Reference`` (the 7×7 reference C6 table per element pair, contracted per edge over the
  elements present, never materialising (E, 7, 7));
- C8 = 3 C6 √(Q_i Q_j) with Q = ``tad_dftd3.data.R4R2`` (s-dftd3's r4r2 = √(Z) <r⁴>/<r²> values);
- Becke–Johnson damping: E_ij = -s6 C6 / (r⁶ + R0⁶) - s8 C8 / (r⁸ + R0⁸), R0 = a1 √(C8/C6) + a2.

Per-atom energies are E_i = ½ Σ_j E_ij (tad-dftd3's convention), in eV (Hartree and Bohr from tad-mctc/ASE).
Functional parameters come by name from tad-dftd3's copy of the s-dftd3 parameter table
(:func:`d3bj_parameters`: "pbe", "b3lyp", "wb97x", "wb97m", "r2scan", ...; aliases as in s-dftd3) or as a dict.
The three-body ATM term (s9) is left out (it costs O(n_neighbors²) per atom in a liquid and changes liquid
energies by well under 1 %; it is also off by default in Grimme's original ``dftd3`` program).

Cutoffs
-------
The D3 reference cutoffs (two-body 60 bohr ≈ 31.8 Å, CN 40 bohr ≈ 21.2 Å) are far too big for MD on CPU. Here
``cutoff`` (default 12 Å) and ``cn_cutoff`` (default 10 Å) are parameters, and both the pair energy and the CN
counting function are multiplied by a C² switching function 1 - 10t³ + 15t⁴ - 6t⁵ over the last ``taper`` Å
(default 2 Å) before the cutoff, so energy, forces and stress are continuous at the cutoff (``taper=0`` gives the
hard cutoffs of tad-dftd3/s-dftd3). The pair list within max(cutoff, cn_cutoff) is built at that radius plus a
``skin`` (default 1 Å) and reused between calls until an atom may have moved more than skin/2 (a fresh 12 Å list
cost ~15 ms per MD step at 300 atoms on 2 CPU cores, about half of the whole D3 term). In a liquid of density
0.1 atom/Å³ the truncated C6 tail beyond 12 Å is ≈ 2πρ C6 / (3 r_c³) ≈ 5e-4 eV/atom, and the long-range remainder
of the counting function (≈1e-7 per pair) changes CNs by < 1e-3 beyond 10 Å.

Validation (tests/test_dispersion.py, float64)
----------------------------------------------
- molecules: per-atom energies equal ``tad_dftd3.dftd3`` (s9 = 0) to 1e-8 eV for several molecules and functionals;
- a periodic cell: per-atom energies equal tad-dftd3 on an explicit cluster of periodic images (hard cutoffs, same
  cutoffs) to 1e-8 eV — an independent check of the pair-list CN and energy;
- a molecule in a large vacuum cell gives the molecular result; a supercell gives n × the cell energy;
- forces = finite differences of the energy; stress = finite differences under strain of positions and cell;
- the energy is continuous across the cutoff.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from ase import units as ase_units
from torch import nn

from matsim.core.neighbors import SkinHalfPairList

__all__ = [
    "D3_CUTOFF",
    "D3_CN_CUTOFF",
    "D3_TAPER",
    "D3_SKIN",
    "d3bj_parameters",
    "D3Dispersion",
    "DispersionTerm",
    "d3_energies",
    "dispersion_energies",
]

#: Default two-body cutoff, Å.
D3_CUTOFF = 12.0
#: Default coordination-number cutoff, Å.
D3_CN_CUTOFF = 10.0
#: Default width of the smooth switch-off before each cutoff, Å.
D3_TAPER = 2.0
#: Default skin of the reused pair list, Å (rebuilt when an atom may have moved more than skin/2).
D3_SKIN = 1.0

_HARTREE = ase_units.Hartree  # eV


def _bohr_per_angstrom() -> float:
    from tad_mctc.units import length

    return float(length.AA2AU)


def d3bj_parameters(functional: str | Mapping[str, float]) -> dict[str, float]:
    """D3(BJ) parameters {s6, s8, a1, a2} of a functional (s-dftd3's table via tad-dftd3), or a given dict checked.

    Raises:
        ValueError: unknown functional, or no D3(BJ) parametrisation for it.
    """
    if isinstance(functional, Mapping):
        params = {k: float(v) for k, v in functional.items()}
        missing = {"a1", "a2", "s8"} - set(params)
        if missing:
            raise ValueError(f"D3(BJ) parameters need a1, a2, s8 (s6 defaults to 1); missing {sorted(missing)}")
        return {"s6": params.get("s6", 1.0), "s8": params["s8"], "a1": params["a1"], "a2": params["a2"]}
    from tad_dftd3.param import get_functional_params

    try:
        raw = get_functional_params(functional, damping="bj", dtype=torch.float64)
    except KeyError as exc:
        raise ValueError(f"unknown functional {functional!r} for DFT-D3") from exc
    except ValueError as exc:
        raise ValueError(f"no D3(BJ) parameters for functional {functional!r}") from exc
    return {"s6": float(raw.get("s6", 1.0)), "s8": float(raw["s8"]), "a1": float(raw["a1"]), "a2": float(raw["a2"])}


def _switch(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """C² switching function: 1 below ``cutoff - width``, 0 from ``cutoff`` on."""
    if width <= 0:
        return (r < cutoff).to(r.dtype)
    t = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)


class D3Dispersion(nn.Module):
    """DFT-D3(BJ) two-body dispersion, per-atom energies in eV, for batches of molecules and periodic cells.

    Args:
        functional: name (e.g. ``"pbe"``, ``"b3lyp"``, ``"wb97x"``) or a dict {s6, s8, a1, a2}.
        cutoff: two-body cutoff, Å. cn_cutoff: coordination-number cutoff, Å.
        taper: width (Å) of the smooth switch-off before each cutoff; 0 for hard cutoffs.

    ``forward(numbers (N,), pos (N, 3) Å, cell (B, 3, 3) Å, pbc (B, 3), ptr (B + 1,) | None) -> (N,) eV``;
    :meth:`from_graph` takes an AtomGraph (or the strained copy a potential receives). Systems periodic along some
    directions only are handled too (vesin lists respect per-direction pbc).
    """

    def __init__(
        self,
        functional: str | Mapping[str, float] = "pbe",
        cutoff: float = D3_CUTOFF,
        cn_cutoff: float = D3_CN_CUTOFF,
        taper: float = D3_TAPER,
        skin: float = D3_SKIN,
    ) -> None:
        super().__init__()
        from tad_dftd3.data import R4R2
        from tad_dftd3.reference import Reference
        from tad_mctc.data import radii

        if cutoff <= 0 or cn_cutoff <= 0:
            raise ValueError(f"cutoffs must be positive, got cutoff={cutoff}, cn_cutoff={cn_cutoff}")
        if taper < 0 or taper > min(cutoff, cn_cutoff):
            raise ValueError(f"taper must lie in [0, min(cutoff, cn_cutoff)], got {taper}")
        self.functional = functional if isinstance(functional, str) else "custom"
        self.params = d3bj_parameters(functional)
        self.cutoff, self.cn_cutoff, self.taper = float(cutoff), float(cn_cutoff), float(taper)
        reference = Reference(dtype=torch.float64, device=torch.device("cpu"))
        self.register_buffer("ref_c6", reference.c6, persistent=False)  # (104, 104, 7, 7), Hartree·bohr⁶
        self.register_buffer("ref_cn", reference.cn, persistent=False)  # (104, 7)
        self.register_buffer("rcov", radii.COV_D3(dtype=torch.float64)[: reference.cn.shape[0]], persistent=False)
        self.register_buffer("r4r2", R4R2(dtype=torch.float64)[: reference.cn.shape[0]], persistent=False)
        self.max_z = reference.cn.shape[0] - 1
        self.skin = float(skin)
        self._pair_lists: dict[int, SkinHalfPairList] = {}  # per system of a batch, reused between calls

    def extra_repr(self) -> str:
        return (f"functional={self.functional!r}, cutoff={self.cutoff}, cn_cutoff={self.cn_cutoff}, "
                f"taper={self.taper}, skin={self.skin}")

    def from_graph(self, graph: Any) -> torch.Tensor:
        """Per-atom energies (N,) of an AtomGraph-like object (``numbers``, ``pos``, ``cell``, ``pbc``, ``ptr``)."""
        return self(graph.numbers, graph.pos, graph.cell, graph.pbc, getattr(graph, "ptr", None))

    def forward(
        self,
        numbers: torch.Tensor,
        pos: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from tad_dftd3.model import weight_references
        from tad_dftd3.reference import Reference
        from tad_mctc.ncoord.count import exp_count

        n = pos.shape[0]
        dtype, device = pos.dtype, pos.device
        if n == 0:
            return torch.zeros(0, dtype=dtype, device=device)
        if int(numbers.max()) > self.max_z or int(numbers.min()) < 1:
            raise ValueError(f"DFT-D3 has parameters for Z = 1..{self.max_z} only")
        to_bohr = _bohr_per_angstrom()
        i, j, vec = self._pairs(pos, cell, pbc, ptr)  # each pair once (half list)
        r = torch.linalg.vector_norm(vec, dim=1)  # Å

        # coordination numbers (tad-mctc's D3 counting function, bohr / bohr ratio)
        rcov = self.rcov.to(device=device, dtype=dtype)[numbers]
        i_c, j_c, r_c = _within(i, j, r, self.cn_cutoff, self.cn_cutoff >= self.cutoff)
        count = exp_count(r_c * to_bohr, rcov[i_c] + rcov[j_c]) * _switch(r_c, self.cn_cutoff, self.taper)
        cn = torch.zeros(n, dtype=dtype, device=device).index_add(0, i_c, count).index_add(0, j_c, count)

        # C6 of each pair: Σ_ab w_ia w_jb C6ref[Z_i, Z_j, a, b], contracted over the elements present
        reference = Reference(cn=self.ref_cn.to(device), c6=self.ref_c6.to(device))
        weights = weight_references(numbers, cn, reference)  # (N, 7), dtype of cn
        elements, species = torch.unique(numbers, return_inverse=True)
        table = self.ref_c6.to(device)[elements][:, elements].to(dtype)  # (U, U, 7, 7)
        i_d, j_d, r_d = _within(i, j, r, self.cutoff, self.cutoff >= self.cn_cutoff)
        partial = torch.einsum("iuab,ia->iub", table[species], weights)  # (N, U, 7)
        c6 = (partial[i_d, species[j_d]] * weights[j_d]).sum(dim=1)

        # Becke-Johnson damped C6 and C8 terms (Hartree, bohr)
        p = self.params
        r4r2 = self.r4r2.to(device=device, dtype=dtype)[numbers]
        qq = 3.0 * r4r2[i_d] * r4r2[j_d]
        r0 = p["a1"] * torch.sqrt(qq) + p["a2"]
        rb = r_d * to_bohr
        r6, r06 = rb**6, r0**6
        e_pair = -(p["s6"] * c6 / (r6 + r06) + p["s8"] * c6 * qq / (r6 * rb * rb + r06 * r0 * r0))
        e_pair = 0.5 * _HARTREE * e_pair * _switch(r_d, self.cutoff, self.taper)
        return torch.zeros(n, dtype=dtype, device=device).index_add(0, i_d, e_pair).index_add(0, j_d, e_pair)

    def _pairs(
        self, pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, ptr: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Half pair list within max(cutoff, cn_cutoff): i, j (global) and differentiable vectors r_ij (E, 3).

        Each unordered pair (i, j, S) / (j, i, -S) is kept once: i < j, or i == j (a periodic self-image) with the
        first non-zero shift component positive. The lists (one per system of the batch) are built on detached
        coordinates at ``radius + skin`` and reused while they hold every pair within the radius
        (:class:`~matsim.core.neighbors.SkinHalfPairList`); pairs beyond a cutoff are dropped by :func:`_within`.
        """
        cells = cell.reshape(-1, 3, 3).to(pos.dtype)
        pbcs = torch.as_tensor(pbc, dtype=torch.bool).reshape(-1, 3)
        if ptr is None:
            ptr = torch.tensor([0, pos.shape[0]], device=pos.device)
        offsets = ptr.tolist()
        radius = max(self.cutoff, self.cn_cutoff)
        ii, jj, vv = [], [], []
        for b, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
            if stop - start < 1:
                continue
            p = pos[start:stop]
            periodic = pbcs[b].cpu()
            pair_list = self._pair_lists.get(b)
            if pair_list is None:
                pair_list = self._pair_lists[b] = SkinHalfPairList(self.skin)
            (src, dst), shifts = pair_list.update(p, cells[b], periodic, radius)
            vec = p[dst] - p[src]
            if bool(periodic.any()):
                vec = vec + shifts @ cells[b]
            ii.append(src + start)
            jj.append(dst + start)
            vv.append(vec)
        if not ii:
            empty = torch.zeros(0, dtype=torch.long, device=pos.device)
            return empty, empty, torch.zeros(0, 3, dtype=pos.dtype, device=pos.device)
        return torch.cat(ii), torch.cat(jj), torch.cat(vv)


class DispersionTerm(nn.Module):
    """D3(BJ) as a switchable energy term of a potential: ``term(graph, charges=None) -> (N,)`` eV.

    Reads ``graph.numbers``, ``graph.pos``, ``graph.cell``, ``graph.pbc`` (the possibly strained copies a potential
    receives from :class:`~matsim.models.forcefield.ForceField`, so stress follows by autograd); charges are unused.
    """

    def __init__(
        self,
        functional: str | Mapping[str, float] = "pbe",
        cutoff: float = D3_CUTOFF,
        cn_cutoff: float = D3_CN_CUTOFF,
        taper: float = D3_TAPER,
    ) -> None:
        super().__init__()
        self.d3 = D3Dispersion(functional, cutoff, cn_cutoff, taper)

    def forward(self, graph: Any, charges: torch.Tensor | None = None) -> torch.Tensor:
        return self.d3.from_graph(graph)


def _within(
    i: torch.Tensor, j: torch.Tensor, r: torch.Tensor, cutoff: float, maybe_all: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs closer than ``cutoff`` (no copy when all are)."""
    inside = r < cutoff
    if maybe_all and bool(inside.all()):
        return i, j, r
    return i[inside], j[inside], r[inside]


_CACHE: dict[tuple, D3Dispersion] = {}


def d3_energies(
    numbers: torch.Tensor,
    pos: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    ptr: torch.Tensor | None = None,
    *,
    functional: str | Mapping[str, float] = "pbe",
    cutoff: float = D3_CUTOFF,
    cn_cutoff: float = D3_CN_CUTOFF,
    taper: float = D3_TAPER,
) -> torch.Tensor:
    """Functional form of :class:`D3Dispersion`: per-atom D3(BJ) energies (N,), eV (the module is cached)."""
    key_params = functional if isinstance(functional, str) else tuple(sorted(dict(functional).items()))
    key = (key_params, float(cutoff), float(cn_cutoff), float(taper))
    module = _CACHE.get(key)
    if module is None:
        module = _CACHE[key] = D3Dispersion(functional, cutoff, cn_cutoff, taper)
    return module(numbers, pos, cell, pbc, ptr)


def dispersion_energies(graph: Any, **options: Any) -> torch.Tensor:
    """Per-atom D3(BJ) energies (N,), eV, of an AtomGraph-like object; options as in :func:`d3_energies`."""
    return d3_energies(graph.numbers, graph.pos, graph.cell, graph.pbc, getattr(graph, "ptr", None), **options)
