"""Cut DFT-sized, gas-phase clusters of whole molecules out of periodic electrolyte snapshots.

A snapshot is a periodic ``ase.Atoms`` in the form :mod:`matsim.md.builder` makes and the MD runner writes: per-atom
``mol_id`` (molecule index) and ``formal_charge`` (e). :func:`cut_clusters` returns clusters of these kinds
(:data:`CLUSTER_KINDS`):

- ``li_shell``: a Li+ and every molecule with a donor atom (O, F, N by default) within ``shell_cutoff`` (2.6 Å) of
  it, its first solvation shell. Li+ whose shell holds no anion (solvent-separated) are taken first, so the kind
  mostly adds shells that ``contact_ion_pair`` does not cover.
- ``contact_ion_pair``: a Li+ with at least one anion in its shell, plus that whole shell.
- ``solvent_dimer`` / ``solvent_trimer``: a solvent molecule and one / two of its ``n_nearest`` nearest solvent
  molecules (by closest-atom or centre-of-mass distance, ``neighbor_metric``), drawn at random.
- ``anion_solvent``: an anion and one of its ``n_nearest`` nearest solvent molecules, drawn at random.

Geometry. Each molecule is first made whole: a minimum spanning tree over the minimum-image distances between its
atoms (its bonds) is walked from its first atom, adding minimum-image bond vectors, so a molecule split across the
box boundary comes out in one piece whatever its size relative to the box. A member molecule is then placed next to
the centre molecule through their closest contact: the minimum-image vector of that atom pair (from a periodic
neighbour list within ``contact_cutoff``) fixes the member's periodic image; molecules without a contact that close
are placed by the minimum image of their centres of mass. The cluster is centred on its centre of mass, without
cell and pbc.

Each cluster carries ``arrays["mol_id"]`` (0 = the centre molecule, then the members), ``arrays["formal_charge"]``,
``arrays["source_mol_id"]`` (the molecule's index in the snapshot), ``info["charge"]`` (Σ formal charges; every
reference method reads it), ``info["cluster_kind"]``, ``info["source"]`` (``"<snapshot id>/mol<centre>"``),
``info["snapshot"]``, ``info["centre_mol"]``, ``info["source_mols"]`` (int array: snapshot molecule ids),
``info["species"]`` (e.g. ``"Li EC3 PF6"``) and ``info["shell_complete"]`` (False when a shell was trimmed to fit).

Filters: clusters outside ``[min_atoms, max_atoms]`` are skipped (a shell above ``max_atoms`` is trimmed to its
nearest molecules first when ``trim_shells``, never dropping the anion of a contact ion pair); clusters with two
atoms closer than ``min_distance`` are skipped (an unphysical snapshot); and within one snapshot a molecule set is
kept once, whatever kind produced it first (the same molecules from another frame are a different geometry and
stay). Every skip is counted in :class:`CutReport`.

Randomness (which centres, which neighbours) comes from a NumPy generator seeded by ``(seed, snapshot_index)``: the
same snapshot, options and seed give the same clusters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_masses
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from matsim.core.config import StrictModel
from matsim.core.errors import StructureError
from matsim.md.species import molecular_formula, species_by_formula

__all__ = ["CLUSTER_KINDS", "ClusterKind", "ClusterOptions", "CutReport", "SnapshotMolecules", "cut_clusters",
           "analyse_snapshot"]

ClusterKind = Literal["li_shell", "contact_ion_pair", "solvent_dimer", "solvent_trimer", "anion_solvent"]

#: Every kind of cluster, in the order they are cut (the first kind to produce a molecule set keeps it).
CLUSTER_KINDS: tuple[str, ...] = ("contact_ion_pair", "li_shell", "anion_solvent", "solvent_dimer", "solvent_trimer")


class ClusterOptions(StrictModel):
    """How clusters are cut (module docstring). Distances in Å."""

    kinds: list[ClusterKind] = Field(default_factory=lambda: list(CLUSTER_KINDS), min_length=1)
    per_kind: PositiveInt = Field(default=2, description="clusters of each kind per snapshot (at most)")
    min_atoms: PositiveInt = 10
    max_atoms: PositiveInt = 60
    cation: str = Field(default="Li", description="element of the cation whose shells are cut")
    donors: list[str] = Field(default_factory=lambda: ["O", "F", "N"], min_length=1)
    shell_cutoff: PositiveFloat = Field(default=2.6, description="cation-donor distance of the first shell")
    neighbor_metric: Literal["closest_atom", "com"] = "closest_atom"
    n_nearest: PositiveInt = Field(default=3, description="dimer/trimer/anion partners drawn from this many nearest")
    contact_cutoff: PositiveFloat = Field(default=6.0, description="neighbour-list cutoff for molecular contacts")
    trim_shells: bool = Field(default=True, description="drop the farthest shell molecules to fit max_atoms")
    min_distance: NonNegativeFloat = Field(default=0.6, description="closer atoms mark a cluster as unphysical")

    @model_validator(mode="after")
    def _window(self) -> ClusterOptions:
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms ({self.min_atoms}) is larger than max_atoms ({self.max_atoms})")
        if self.contact_cutoff < self.shell_cutoff:
            raise ValueError("contact_cutoff must be at least shell_cutoff")
        return self


@dataclass
class CutReport:
    """What happened while cutting: clusters kept per kind, and skips per reason."""

    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def update(self, other: CutReport) -> None:
        self.kept.update(other.kept)
        self.skipped.update(other.skipped)


@dataclass
class SnapshotMolecules:
    """One snapshot taken apart into whole molecules and their contacts.

    Attributes:
        atoms: the snapshot.
        mol_ids: the snapshot's ``mol_id`` of each molecule (molecules are numbered 0..n-1 here, in this order).
        members: atom indices of each molecule (in snapshot order).
        unwrapped: per-atom positions with every molecule whole (each molecule in its own image).
        charge: net formal charge per molecule.
        names: species name per molecule (library name, else Hill formula).
        com: centre of mass per molecule (of the unwrapped positions).
        contact: ``(a, b) -> (distance, atom_in_a, atom_in_b, vector b - a)`` for molecule pairs within the cutoff.
        pairs: the periodic atom pairs ``(i, j, d, D)`` within the cutoff (both directions).
    """

    atoms: Atoms
    mol_ids: np.ndarray
    members: list[np.ndarray]
    unwrapped: np.ndarray
    charge: np.ndarray
    names: list[str]
    com: np.ndarray
    contact: dict[tuple[int, int], tuple[float, int, int, np.ndarray]]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    @property
    def n_molecules(self) -> int:
        return len(self.members)

    def com_distance(self, a: int, others: np.ndarray) -> np.ndarray:
        """Minimum-image centre-of-mass distances from molecule ``a`` to ``others``."""
        return np.linalg.norm(_mic(self.com[others] - self.com[a], self.atoms.cell.array), axis=-1)


def _mic(vectors: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Minimum-image vectors by rounding fractional coordinates (exact for vectors shorter than half the smallest
    cell width in orthorhombic cells; used for bonds and centre-of-mass offsets)."""
    frac = vectors @ np.linalg.inv(cell)
    return (frac - np.round(frac)) @ cell


def _whole_molecule(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Positions of one molecule made whole: walk a minimum spanning tree of its minimum-image distances."""
    n = len(positions)
    if n == 1:
        return positions.copy()
    vectors = _mic(positions[None, :, :] - positions[:, None, :], cell)  # [i, j] = j - i
    distance = np.linalg.norm(vectors, axis=-1) + 1e-12  # zero entries would mean "no edge" to scipy
    np.fill_diagonal(distance, 0.0)
    tree = minimum_spanning_tree(distance)
    order, parent = breadth_first_order(tree, 0, directed=False, return_predecessors=True)
    out = np.empty_like(positions)
    out[0] = positions[0]
    for node in order[1:]:
        out[node] = out[parent[node]] + vectors[parent[node], node]
    return out


def analyse_snapshot(atoms: Atoms, contact_cutoff: float = 6.0) -> SnapshotMolecules:
    """Take a periodic snapshot apart into whole molecules, their charges, names and closest contacts.

    Raises:
        StructureError: the snapshot lacks ``mol_id`` / ``formal_charge`` or a full periodic cell.
    """
    from vesin import NeighborList

    for key in ("mol_id", "formal_charge"):
        if key not in atoms.arrays:
            raise StructureError(f"the snapshot has no per-atom '{key}' array "
                                 "(build or read it with matsim.md.builder)")
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise StructureError("cluster cutting needs a periodic snapshot with a full 3D cell")
    cell = atoms.cell.array
    mol_id = np.asarray(atoms.arrays["mol_id"], dtype=int)
    formal = np.asarray(atoms.arrays["formal_charge"], dtype=int)
    order = np.argsort(mol_id, kind="stable")
    ids, starts = np.unique(mol_id[order], return_index=True)
    members = np.split(order, starts[1:])
    unwrapped = np.empty_like(atoms.positions)
    for m in members:
        unwrapped[m] = _whole_molecule(atoms.positions[m], cell)
    masses = atomic_masses[atoms.numbers]
    com = np.array([masses[m] @ unwrapped[m] / masses[m].sum() for m in members])
    charge = np.array([int(formal[m].sum()) for m in members])
    library = species_by_formula()
    symbols = np.array(atoms.get_chemical_symbols())
    names = []
    for m in members:
        formula = molecular_formula(symbols[m].tolist())
        names.append(library[formula].name if formula in library else formula)
    # dense molecule index 0..n-1 per atom (mol_id values need not be contiguous)
    index_of = np.empty(len(atoms), dtype=int)
    for k, m in enumerate(members):
        index_of[m] = k
    i, j, d, vec = NeighborList(cutoff=contact_cutoff, full_list=True).compute(
        atoms.positions, cell, True, "ijdD")
    i, j = i.astype(int), j.astype(int)
    mi, mj = index_of[i], index_of[j]
    other = mi != mj
    i, j, d, vec, mi, mj = i[other], j[other], d[other], vec[other], mi[other], mj[other]
    by_distance = np.argsort(d, kind="stable")
    keys = mi[by_distance] * len(members) + mj[by_distance]
    _, first = np.unique(keys, return_index=True)
    contact = {}
    for k in by_distance[first]:
        contact[(int(mi[k]), int(mj[k]))] = (float(d[k]), int(i[k]), int(j[k]), vec[k])
    return SnapshotMolecules(atoms, ids, members, unwrapped, charge, names, com, contact, (i, j, d, vec))


# ------------------------------------------------------------------------------------------------ cluster choice


def _shells(snap: SnapshotMolecules, options: ClusterOptions) -> dict[int, list[tuple[float, int]]]:
    """Per cation molecule: ``[(closest donor distance, molecule), ...]`` of its first shell, nearest first."""
    symbols = np.array(snap.atoms.get_chemical_symbols())
    i, j, d, _ = snap.pairs
    cation_mols = {k for k, m in enumerate(snap.members) if len(m) == 1 and symbols[m[0]] == options.cation}
    mol_of = np.empty(len(snap.atoms), dtype=int)
    for k, m in enumerate(snap.members):
        mol_of[m] = k
    shells: dict[int, dict[int, float]] = {k: {} for k in sorted(cation_mols)}
    near = (d <= options.shell_cutoff) & (symbols[i] == options.cation) & np.isin(symbols[j], options.donors)
    for a, b, dist in zip(i[near], j[near], d[near]):
        centre, member = int(mol_of[a]), int(mol_of[b])
        if centre in shells:
            shells[centre][member] = min(dist, shells[centre].get(member, np.inf))
    return {c: sorted((dist, m) for m, dist in shell.items()) for c, shell in shells.items()}


def _nearest(snap: SnapshotMolecules, centre: int, candidates: list[int], options: ClusterOptions) -> list[int]:
    """``candidates`` (not ``centre``) sorted by distance from ``centre``, the ``n_nearest`` first ones."""
    candidates = [c for c in candidates if c != centre]
    if not candidates:
        return []
    if options.neighbor_metric == "com":
        dist = snap.com_distance(centre, np.array(candidates))
    else:
        dist = np.array([snap.contact.get((centre, c), (np.inf,))[0] for c in candidates])
    order = np.argsort(dist, kind="stable")
    return [candidates[k] for k in order[: options.n_nearest] if np.isfinite(dist[k])]


def _fit_shell(snap: SnapshotMolecules, centre: int, shell: list[tuple[float, int]], keep: set[int],
               options: ClusterOptions) -> tuple[list[int], bool]:
    """Shell molecules (nearest first), trimmed from the far end to fit ``max_atoms`` when allowed; never drops
    molecules in ``keep``. Returns the members and whether the shell is complete."""
    members = [m for _, m in shell]
    size = len(snap.members[centre]) + sum(len(snap.members[m]) for m in members)
    complete = True
    if options.trim_shells:
        for m in reversed([m for m in members if m not in keep]):
            if size <= options.max_atoms:
                break
            members.remove(m)
            size -= len(snap.members[m])
            complete = False
    return members, complete


def _choices(snap: SnapshotMolecules, kind: str, options: ClusterOptions, rng: np.random.Generator,
             shells: dict[int, list[tuple[float, int]]]) -> list[tuple[int, list[int], bool]]:
    """Candidate clusters of ``kind`` as ``(centre, members, shell_complete)`` in the random order they are tried."""
    anions = [k for k in range(snap.n_molecules) if snap.charge[k] < 0]
    solvents = [k for k in range(snap.n_molecules) if snap.charge[k] == 0]
    out = []
    if kind in ("li_shell", "contact_ion_pair"):
        with_anion = [c for c, s in shells.items() if s and any(snap.charge[m] < 0 for _, m in s)]
        if kind == "contact_ion_pair":
            centres = list(rng.permutation(with_anion)) if with_anion else []
        else:
            separated = [c for c, s in shells.items() if s and c not in with_anion]
            centres = [*(rng.permutation(separated) if separated else []),
                       *(rng.permutation(with_anion) if with_anion else [])]
        for c in centres:
            shell = shells[int(c)]
            # a contact ion pair keeps its nearest anion whatever the trimming; a plain shell keeps nothing
            keep = {min((d, m) for d, m in shell if snap.charge[m] < 0)[1]} if kind == "contact_ion_pair" else set()
            members, complete = _fit_shell(snap, int(c), shell, keep, options)
            out.append((int(c), members, complete))
        return out
    centres = anions if kind == "anion_solvent" else solvents
    size = 2 if kind == "solvent_trimer" else 1
    for c in (rng.permutation(centres) if centres else []):
        near = _nearest(snap, int(c), solvents, options)
        if len(near) < size:
            continue
        pick = sorted(rng.choice(len(near), size=size, replace=False).tolist())
        out.append((int(c), [near[k] for k in pick], True))
    return out


# ------------------------------------------------------------------------------------------------ geometry


def _place(snap: SnapshotMolecules, centre: int, member: int) -> np.ndarray:
    """Unwrapped positions of ``member`` moved to the periodic image next to ``centre``."""
    cell = snap.atoms.cell.array
    m_atoms = snap.members[member]
    hit = snap.contact.get((centre, member))
    if hit is not None:
        _, a, b, vector = hit
        shift = snap.unwrapped[a] + vector - snap.unwrapped[b]
    else:
        offset = _mic(snap.com[member] - snap.com[centre], cell)
        shift = snap.com[centre] + offset - snap.com[member]
    return snap.unwrapped[m_atoms] + shift


def _build(snap: SnapshotMolecules, centre: int, members: list[int]) -> Atoms:
    molecules = [centre, *members]
    indices = np.concatenate([snap.members[m] for m in molecules])
    positions = np.concatenate([snap.unwrapped[snap.members[centre]], *[_place(snap, centre, m) for m in members]])
    cluster = Atoms(snap.atoms.numbers[indices], positions=positions)
    cluster.positions -= cluster.get_center_of_mass()
    cluster.arrays["mol_id"] = np.concatenate([np.full(len(snap.members[m]), k) for k, m in enumerate(molecules)])
    cluster.arrays["formal_charge"] = np.asarray(snap.atoms.arrays["formal_charge"], dtype=int)[indices]
    cluster.arrays["source_mol_id"] = np.asarray(snap.atoms.arrays["mol_id"], dtype=int)[indices]
    cluster.info["charge"] = int(cluster.arrays["formal_charge"].sum())
    return cluster


def _min_distance(positions: np.ndarray) -> float:
    diff = positions[:, None, :] - positions[None, :, :]
    d = np.sqrt((diff**2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(d.min()) if len(positions) > 1 else np.inf


def _species_label(names: list[str]) -> str:
    counts = Counter(names)
    return " ".join(f"{n}{c if c > 1 else ''}" for n, c in counts.items())


def cut_clusters(snapshot: Atoms, options: ClusterOptions | None = None, seed: int = 0, snapshot_index: int = 0,
                 snapshot_id: str | None = None, report: CutReport | None = None,
                 molecules: SnapshotMolecules | None = None) -> list[Atoms]:
    """Clusters of whole molecules cut from one periodic ``snapshot`` (module docstring).

    Args:
        options: what to cut (default :class:`ClusterOptions`).
        seed, snapshot_index: seed the generator (``(seed, snapshot_index)``), so each snapshot of a run differs.
        snapshot_id: names the snapshot in ``info["source"]`` (default ``"frame<snapshot_index>"``).
        report: counts of kept and skipped clusters are added to it.
        molecules: a ready :func:`analyse_snapshot` of ``snapshot`` (else computed here).

    Returns:
        Clusters in kind order (:data:`CLUSTER_KINDS`), at most ``options.per_kind`` of each kind.
    """
    options = options or ClusterOptions()
    report = report if report is not None else CutReport()
    snap = molecules or analyse_snapshot(snapshot, options.contact_cutoff)
    rng = np.random.default_rng([seed, snapshot_index])
    snapshot_id = snapshot_id or f"frame{snapshot_index}"
    shells = _shells(snap, options)
    seen: set[frozenset[int]] = set()
    clusters: list[Atoms] = []
    for kind in [k for k in CLUSTER_KINDS if k in options.kinds]:
        kept = 0
        candidates = _choices(snap, kind, options, rng, shells)
        if not candidates:
            report.skipped[f"{kind}: no candidate"] += 1
        for centre, members, complete in candidates:
            if kept >= options.per_kind:
                break
            key = frozenset([centre, *members])
            if key in seen:
                report.skipped["duplicate"] += 1
                continue
            size = sum(len(snap.members[m]) for m in key)
            if size < options.min_atoms:
                report.skipped["too small"] += 1
                continue
            if size > options.max_atoms:
                report.skipped["too large"] += 1
                continue
            cluster = _build(snap, centre, members)
            if _min_distance(cluster.positions) < options.min_distance:
                report.skipped["overlapping atoms"] += 1
                continue
            seen.add(key)
            molecules_in = [centre, *members]
            cluster.info.update(
                cluster_kind=kind,
                source=f"{snapshot_id}/mol{snap.mol_ids[centre]}",
                snapshot=snapshot_id,
                centre_mol=int(snap.mol_ids[centre]),
                source_mols=np.array([snap.mol_ids[m] for m in molecules_in], dtype=int),
                species=_species_label([snap.names[m] for m in molecules_in]),
                shell_complete=bool(complete),
            )
            clusters.append(cluster)
            report.kept[kind] += 1
            kept += 1
    return clusters
