"""A torch ``Dataset`` of :class:`~matsim.core.graph.AtomGraph` with training targets, and its on-disk cache.

Reading an extxyz file and building neighbor lists happens once per (file contents, cutoff, keys, targets): the
result is stored as one file of plain tensors (frames back to back, with offsets), loaded with
``torch.load(weights_only=True)``. The cache key hashes the file's bytes, so an edited file is re-read; the cache is
written atomically, so concurrent runs (or DDP ranks) never see half a file.

Each item is an ``AtomGraph`` with the core fields (``pos``, ``numbers``, ``cell``, ``pbc``, ``charge``,
``molecule_id``, ``edge_index``, ``shifts``) and the targets attached as graph fields that PyG batches:

=============== ========== =====================================
``ref_energy``  (1,)       total energy, eV
``ref_forces``  (N, 3)     eV/Å
``ref_stress``  (1, 3, 3)  eV/Å³, ASE sign
``ref_charges`` (N,)       e
``ref_dipole``  (1, 3)     e·Å
``frame_id``    (1,) int   index of the frame in its file
=============== ========== =====================================

Mixed data (``DataKeys.missing_targets: skip``): a frame that lacks a target holds NaN in its place, and the target
gets a mask field ``ref_<target>_mask`` (bool; (N,) for forces and charges, (1,) per frame otherwise) that is True
where the label exists. Only targets that some frame lacks get a mask, so fully labelled data are unchanged; the
mask is a ``ref_*`` field, so it batches, moves and is copied into a captured CUDA-graph step like the labels, and
:class:`~matsim.train.losses.WeightedLoss` averages each term over the labelled entries only. A target that no
frame of the file has is still an error.

:meth:`GraphDataset.batch` builds a whole batch at once by gathering from those tensors (what the trainer's
DataLoader uses): the same fields and values as ``collate([dataset[i] for i in items])`` (PyG's
``Batch.from_data_list``) at a fraction of the cost, plus two plain attributes that let
:class:`~matsim.models.forcefield.ForceField` skip per-step host-device synchronisations:

- ``edge_cutoff``: every edge of the batch is shorter than this (checked once per dtype on the whole dataset, with
  the arithmetic ForceField uses; edges that fail the check in that dtype, which ForceField would drop, are dropped
  here), so ForceField need not measure and prune the edges for a potential of at least this cutoff;
- ``numbers_present``: the sorted atomic numbers of the batch (a tuple of ints, read on the host before the batch
  moves to the GPU), so unsupported elements are reported without reading the GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from matsim.core.errors import InputFileError, MatsimError
from matsim.core.graph import AtomGraph
from matsim.core.io import atomic_torch_save
from matsim.datasets.atoms import TARGETS, DataKeys, MissingKeyError, frame_targets, read_frames

__all__ = ["GraphDataset", "default_cache_dir", "file_digest", "TARGET_FIELDS", "MASK_FIELDS"]

CACHE_VERSION = 1
#: Graph field of each target.
TARGET_FIELDS = {t: f"ref_{t}" for t in TARGETS}
#: Graph field of each target's label mask (present only for targets that some frames lack; see the module docstring).
MASK_FIELDS = {t: f"ref_{t}_mask" for t in TARGETS}
_PER_ATOM = {"forces", "charges"}
#: Shape of one frame's label of each target (N: the frame's atom count), for NaN-filling a missing label.
_SHAPES = {"energy": (), "forces": ("N", 3), "stress": (3, 3), "charges": ("N",), "dipole": (3,)}


def default_cache_dir() -> Path:
    """``$MATSIM_CACHE_DIR`` or ``~/.cache/matsim/graphs``."""
    env = os.environ.get("MATSIM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "matsim" / "graphs"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class GraphDataset(Dataset):
    """Frames of one data file as AtomGraphs with targets (see the module docstring).

    Build with :meth:`from_file`; take subsets with :meth:`select`. Items are built on access from tensors held back
    to back, so a dataset of a million atoms costs a few tensors, not a million Python objects.
    """

    def __init__(self, store: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype = torch.float64,
                 indices: Sequence[int] | None = None) -> None:
        self.store = store
        self.meta = meta
        self.dtype = dtype
        self.indices = list(range(len(store["atom_ptr"]) - 1)) if indices is None else [int(i) for i in indices]
        self.targets: list[str] = list(meta["targets"])
        self._atom_ptr = store["atom_ptr"].tolist()
        self._edge_ptr = store["edge_ptr"].tolist()
        #: {dtype: (edge_index, shifts, edge_ptr)} of the edges shorter than the cutoff in that dtype (see batch()).
        self._edges_within: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | Path,
        cutoff: float,
        keys: DataKeys = DataKeys(),
        targets: Iterable[str] = ("energy", "forces"),
        dtype: torch.dtype = torch.float64,
        cache_dir: str | Path | None = None,
        cache: bool = True,
    ) -> "GraphDataset":
        """Frames of ``path`` with neighbor lists within ``cutoff`` Å and the ``targets`` read under ``keys``.

        With ``cache`` the preprocessed tensors are stored in ``cache_dir`` (default :func:`default_cache_dir`)
        under a name made of the file's hash, the cutoff, the keys and the targets.
        """
        path = Path(path)
        targets = [t for t in TARGETS if t in set(targets)]
        if not path.is_file():
            raise InputFileError(f"data file not found: {path}")
        meta = {
            "version": CACHE_VERSION,
            "sha256": file_digest(path),
            "cutoff": float(cutoff),
            "keys": {t: getattr(keys, t) for t in targets} | ({"virial": keys.virial} if "stress" in targets else {}),
            "targets": targets,
        }
        if keys.missing_targets == "skip":
            meta["missing_targets"] = "skip"
        cache_file = None
        if cache:
            name = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
            cache_file = Path(cache_dir or default_cache_dir()) / f"{path.stem}-{name}.pt"
            if cache_file.is_file():
                try:
                    payload = torch.load(cache_file, map_location="cpu", weights_only=True)
                    if payload.get("meta", {}).get("sha256") == meta["sha256"]:
                        return cls(payload["store"], payload["meta"] | {"source": str(path)}, dtype)
                except Exception:  # a damaged cache file is rebuilt
                    pass
        store = _preprocess(path, cutoff, keys, targets)
        if cache_file is not None:
            try:
                atomic_torch_save({"meta": meta, "store": store}, cache_file)
            except OSError:  # a read-only or full cache folder only costs the preprocessing next time
                pass
        return cls(store, meta | {"source": str(path)}, dtype)

    def select(self, indices: Sequence[int]) -> "GraphDataset":
        """The frames ``indices`` (indices of this dataset, not of the file)."""
        return self._sharing(GraphDataset(self.store, self.meta, self.dtype, [self.indices[int(i)] for i in indices]))

    def with_dtype(self, dtype: torch.dtype) -> "GraphDataset":
        return self._sharing(GraphDataset(self.store, self.meta, dtype, self.indices))

    def _sharing(self, other: "GraphDataset") -> "GraphDataset":
        other._edges_within = self._edges_within  # same store: the per-dtype edge check is done once for both
        return other

    # access -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> AtomGraph:
        frame = self.indices[item]
        s = self.store
        a0, a1 = self._atom_ptr[frame], self._atom_ptr[frame + 1]
        e0, e1 = self._edge_ptr[frame], self._edge_ptr[frame + 1]
        dtype = self.dtype
        fields = dict(
            pos=s["pos"][a0:a1].to(dtype),
            numbers=s["numbers"][a0:a1],
            cell=s["cell"][frame : frame + 1].to(dtype),
            pbc=s["pbc"][frame : frame + 1],
            charge=s["charge"][frame : frame + 1].to(dtype),
            molecule_id=s["molecule_id"][a0:a1],
            edge_index=s["edge_index"][:, e0:e1],
            shifts=s["shifts"][e0:e1].to(dtype),
            frame_id=torch.tensor([frame]),
        )
        for target in self.targets:
            values = s[target]
            fields[TARGET_FIELDS[target]] = (values[a0:a1] if target in _PER_ATOM else values[frame : frame + 1]).to(dtype)
            mask = s.get(f"{target}_labelled")
            if mask is not None:
                fields[MASK_FIELDS[target]] = mask[frame].expand(a1 - a0) if target in _PER_ATOM \
                    else mask[frame : frame + 1]
        return AtomGraph(num_nodes=a1 - a0, **fields)

    @staticmethod
    def collate(graphs: Sequence[AtomGraph]) -> AtomGraph:
        return AtomGraph.collate(graphs)

    def batch(self, items: Sequence[int]) -> AtomGraph:
        """The frames ``items`` (indices of this dataset) as one batched graph, gathered in a few tensor operations.

        Same fields and values as ``collate([self[i] for i in items])`` (``batch`` and ``ptr`` included), plus the
        ``edge_cutoff`` and ``numbers_present`` attributes described in the module docstring.
        """
        s, dtype = self.store, self.dtype
        edge_index_all, shifts_all, edge_ptr = self._edges_in_cutoff(dtype)
        frames = torch.tensor([self.indices[int(i)] for i in items], dtype=torch.long)
        num_systems = len(frames)
        atom_ptr = s["atom_ptr"]
        atom_start = atom_ptr[frames]
        atom_count = atom_ptr[frames + 1] - atom_start
        edge_start = edge_ptr[frames]
        edge_count = edge_ptr[frames + 1] - edge_start
        systems = torch.arange(num_systems)
        batch = torch.repeat_interleave(systems, atom_count)
        ptr = torch.zeros(num_systems + 1, dtype=torch.long)
        torch.cumsum(atom_count, 0, out=ptr[1:])
        atoms = atom_start[batch] + torch.arange(len(batch)) - ptr[batch]
        edge_system = torch.repeat_interleave(systems, edge_count)
        edge_first = torch.zeros(num_systems + 1, dtype=torch.long)
        torch.cumsum(edge_count, 0, out=edge_first[1:])
        edges = edge_start[edge_system] + torch.arange(len(edge_system)) - edge_first[edge_system]
        numbers = s["numbers"][atoms]
        fields = dict(
            pos=s["pos"][atoms].to(dtype),
            numbers=numbers,
            cell=s["cell"][frames].to(dtype),
            pbc=s["pbc"][frames],
            charge=s["charge"][frames].to(dtype),
            molecule_id=s["molecule_id"][atoms],
            edge_index=edge_index_all[:, edges] + ptr[edge_system],
            shifts=shifts_all[edges],
            frame_id=frames,
        )
        for target in self.targets:
            values = s[target]
            fields[TARGET_FIELDS[target]] = (values[atoms] if target in _PER_ATOM else values[frames]).to(dtype)
            mask = s.get(f"{target}_labelled")
            if mask is not None:
                fields[MASK_FIELDS[target]] = mask[frames][batch] if target in _PER_ATOM else mask[frames]
        graph = AtomGraph(num_nodes=len(batch), batch=batch, ptr=ptr, **fields)
        graph.edge_cutoff = self.cutoff
        graph.numbers_present = tuple(torch.unique(numbers).tolist())
        return graph

    def _edges_in_cutoff(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(edge_index, shifts in ``dtype``, edge_ptr) of the stored edges whose length, computed in ``dtype`` as
        :meth:`AtomGraph.edge_vectors` and ForceField do, is below the cutoff: the edges ForceField keeps (all of
        them, unless rounding in a lower precision puts an edge built at the cutoff just outside it)."""
        cached = self._edges_within.get(dtype)
        if cached is not None:
            return cached
        s = self.store
        edge_ptr = s["edge_ptr"]
        num_frames = len(edge_ptr) - 1
        edge_frame = torch.repeat_interleave(torch.arange(num_frames), edge_ptr.diff())
        offset = s["atom_ptr"][edge_frame]
        i, j = s["edge_index"][0] + offset, s["edge_index"][1] + offset
        pos, shifts, cell = s["pos"].to(dtype), s["shifts"].to(dtype), s["cell"].to(dtype)
        vectors = pos[j] - pos[i] + torch.einsum("ek,ekl->el", shifts, cell[edge_frame])
        cutoff = self.cutoff
        keep = (vectors * vectors).sum(dim=1) < cutoff * cutoff
        if bool(keep.all()):
            cached = (s["edge_index"], shifts, edge_ptr)
        else:
            counts = torch.zeros(num_frames, dtype=torch.long).index_add_(0, edge_frame[keep], torch.ones_like(edge_frame[keep]))
            kept_ptr = torch.zeros(num_frames + 1, dtype=torch.long)
            torch.cumsum(counts, 0, out=kept_ptr[1:])
            cached = (s["edge_index"][:, keep], shifts[keep], kept_ptr)
        self._edges_within[dtype] = cached
        return cached

    # statistics helpers -----------------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return str(self.meta.get("source", "<data>"))

    @property
    def cutoff(self) -> float:
        return float(self.meta["cutoff"])

    def frame_numbers(self) -> list[np.ndarray]:
        """Atomic numbers of each frame."""
        numbers = self.store["numbers"].numpy()
        return [numbers[self._atom_ptr[f] : self._atom_ptr[f + 1]] for f in self.indices]

    def periodic(self) -> list[bool]:
        """Whether each frame is periodic along any axis."""
        return self.store["pbc"][self.indices].any(dim=1).tolist()

    def labelled(self, target: str) -> np.ndarray:
        """(frames,) bool: which frames carry a label of ``target`` (all of them unless ``missing_targets: skip``)."""
        if target not in self.targets:
            return np.zeros(len(self.indices), dtype=bool)
        mask = self.store.get(f"{target}_labelled")
        return np.ones(len(self.indices), dtype=bool) if mask is None else mask[self.indices].numpy()

    def energies(self) -> np.ndarray:
        """(frames,) total energies, eV. Frames without an energy label make this an error: the statistics that
        use it (least-squares E0s, E0 refits) need every frame's energy."""
        missing = np.flatnonzero(~self.labelled("energy"))
        if len(missing):
            raise MatsimError(f"{self.source}: {len(missing)} frames have no energy (e.g. frame "
                              f"{self.indices[int(missing[0])]}); E0s cannot be fitted by least squares on them: give "
                              "data.e0s as a mapping or data.isolated_atoms, or fine-tune with model.refit_e0s: false")
        return self.store["energy"][self.indices].numpy()

    def forces(self) -> list[np.ndarray]:
        """(N, 3) forces of each frame that has them, eV/Å (frames without a force label are left out)."""
        forces = self.store["forces"].numpy()
        labelled = self.labelled("forces")
        return [forces[self._atom_ptr[f] : self._atom_ptr[f + 1]] for f, ok in zip(self.indices, labelled) if ok]

    def num_atoms(self) -> int:
        return int(sum(self._atom_ptr[f + 1] - self._atom_ptr[f] for f in self.indices))

    def num_edges(self) -> int:
        return int(sum(self._edge_ptr[f + 1] - self._edge_ptr[f] for f in self.indices))

    def species(self) -> list[int]:
        return sorted({int(z) for numbers in self.frame_numbers() for z in numbers})


def _preprocess(path: Path, cutoff: float, keys: DataKeys, targets: list[str]) -> dict[str, torch.Tensor]:
    """Read frames, check and convert their targets, build neighbor lists; tensors back to back (float64).

    With ``keys.missing_targets == "skip"`` a missing label is NaN-filled and ``<target>_labelled`` (frames,) bool
    records which frames have it (only for targets that some frame lacks)."""
    frames = read_frames(path)
    skip = keys.missing_targets == "skip"
    parts: dict[str, list] = {k: [] for k in ("pos", "numbers", "cell", "pbc", "charge", "molecule_id", "edge_index", "shifts")}
    values: dict[str, list] = {t: [] for t in targets}
    labelled: dict[str, list[bool]] = {t: [] for t in targets}
    atom_ptr, edge_ptr = [0], [0]
    for index, atoms in enumerate(frames):
        found = frame_targets(atoms, keys, required=() if skip else targets, optional=targets, source=path,
                              index=index)
        graph = AtomGraph.from_atoms(atoms, cutoff=cutoff, dtype=torch.float64)
        for key in parts:
            parts[key].append(graph[key])
        for target in targets:
            labelled[target].append(target in found)
            value = found.get(target)
            if value is None:
                shape = tuple(len(atoms) if n == "N" else n for n in _SHAPES[target])
                value = np.full(shape, np.nan)
            values[target].append(torch.as_tensor(value, dtype=torch.float64))
        atom_ptr.append(atom_ptr[-1] + len(atoms))
        edge_ptr.append(edge_ptr[-1] + graph.edge_index.shape[1])
    store = {
        "pos": torch.cat(parts["pos"]),
        "numbers": torch.cat(parts["numbers"]),
        "cell": torch.cat(parts["cell"]),
        "pbc": torch.cat(parts["pbc"]),
        "charge": torch.cat(parts["charge"]),
        "molecule_id": torch.cat(parts["molecule_id"]),
        "edge_index": torch.cat(parts["edge_index"], dim=1),
        "shifts": torch.cat(parts["shifts"]),
        "atom_ptr": torch.tensor(atom_ptr),
        "edge_ptr": torch.tensor(edge_ptr),
    }
    for target in targets:
        store[target] = torch.cat(values[target]) if target in _PER_ATOM else torch.stack(values[target])
        if not any(labelled[target]):
            key = getattr(keys, target)
            raise MissingKeyError(f"{path}: no frame has {target} under key '{key}' (data.keys.{target}); "
                                  f"missing_targets: skip leaves out frames without it, but some frame must have it")
        if not all(labelled[target]):
            store[f"{target}_labelled"] = torch.tensor(labelled[target])
    return store


