"""The interface every matsim potential implements.

A potential is an ``nn.Module`` mapping an :class:`~matsim.core.graph.AtomGraph` to per-atom energies (and, if it
has them, per-atom charges). It never computes forces or stress itself: :class:`matsim.models.forcefield.ForceField`
does that in one place for training, the calculator and MD.

Inputs a potential may read from the graph (prepared by ``ForceField``):

- ``graph.edge_vec`` (E, 3): r_ij = pos[j] - pos[i] + S @ cell, Å, for edges within ``self.cutoff`` only. Short-range
  terms must depend on positions *only* through these vectors (that is what makes the virial cheap).
- ``graph.pos`` (N, 3) and ``graph.cell`` (B, 3, 3): strained copies when stress is requested; long-range terms
  (Ewald reciprocal space, dispersion beyond the cutoff) read them directly.
- ``graph.numbers`` (N,), ``graph.charge`` (B,), ``graph.system_index()`` (N,), ``graph.edge_index`` (2, E).

Output: a dict with ``"energies"`` (N,) in eV including the per-element reference energy E0, and optionally
``"charges"`` (N,) in e, ``"forces"`` (N, 3) in eV/Å for direct-force heads (non-conservative), and
``"terms"``: a dict of per-system (B,) energy components for reporting.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from matsim.core.graph import AtomGraph

__all__ = ["Potential", "NUM_ELEMENTS", "numbers_checked", "sorted_species", "species_lookup"]

NUM_ELEMENTS = 119  # index = atomic number; 0 is unused

#: Set (by :func:`numbers_checked`) while a potential runs on a graph whose elements were already checked on the host.
_NUMBERS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("matsim_numbers_checked", default=False)


@contextlib.contextmanager
def numbers_checked() -> Iterator[None]:
    """Within this block :meth:`Potential.species_of` trusts that every atomic number is supported (the caller
    checked them with :meth:`Potential.check_numbers`), so it skips its own check: ``bool(tensor)`` reads the
    tensor back from the GPU, a host-device synchronisation in every forward pass."""
    token = _NUMBERS_CHECKED.set(True)
    try:
        yield
    finally:
        _NUMBERS_CHECKED.reset(token)


def sorted_species(species: Iterable[int]) -> list[int]:
    """The distinct atomic numbers of ``species``, sorted; a ValueError unless they lie in 1..118."""
    out = sorted({int(z) for z in species})
    if not out or out[0] < 1 or out[-1] >= NUM_ELEMENTS:
        raise ValueError(f"species must be atomic numbers in 1..118, got {out}")
    return out


def species_lookup(species: Sequence[int]) -> torch.Tensor:
    """(NUM_ELEMENTS,) int64 index of each atomic number in ``species``, -1 for the others."""
    index = torch.full((NUM_ELEMENTS,), -1, dtype=torch.long)
    index[torch.tensor(list(species), dtype=torch.long)] = torch.arange(len(species))
    return index


class Potential(nn.Module):
    """Base class: species handling, per-element reference energies and the recorded hyperparameters.

    Args:
        cutoff: interaction cutoff of the short-range part, Å.
        species: atomic numbers the model supports (others are rejected by the calculator).
        atomic_energies: E0 per element {Z: eV}; the energy of an isolated atom. Missing species get 0.
    """

    #: Whether the model predicts per-atom charges.
    has_charges: bool = False
    #: Whether forces come from a direct head (non-conservative) instead of -dE/dr.
    direct_forces: bool = False
    #: Whether ``torch.compile`` can trace the model (``ForceField(compile=...)``).
    compilable: bool = True
    #: Hyperparameters that switch energy terms without weights on or off (e.g. D3 dispersion); fine-tuning from a
    #: checkpoint may change them (:mod:`matsim.train.finetune`).
    switchable_hyperparameters: tuple[str, ...] = ()

    def __init__(self, cutoff: float, species: Sequence[int], atomic_energies: Mapping[int | str, float] | None = None):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        species = sorted_species(species)
        self.cutoff = float(cutoff)
        self.species = species
        self.register_buffer("species_index", species_lookup(species), persistent=False)
        e0 = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)  # exact E0s survive a later cast to float64
        for z, value in (atomic_energies or {}).items():
            e0[int(z)] = float(value)
        self.register_buffer("atomic_energies", e0)
        self.hyperparameters: dict[str, Any] = {}

    @property
    def num_species(self) -> int:
        return len(self.species)

    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        """(N,) index into ``self.species`` of each atomic number; a ``ValueError`` for unsupported elements
        (checked here unless the caller already did, see :func:`numbers_checked`)."""
        index = self.species_index[numbers]
        if not _NUMBERS_CHECKED.get() and bool((index < 0).any()):
            self.check_numbers(numbers[index < 0].tolist())
        return index

    def check_numbers(self, numbers: Iterable[int]) -> None:
        """A ``ValueError`` naming the elements among ``numbers`` (host-side ints) that this model does not support."""
        bad = {int(z) for z in numbers} - set(self.species)
        if bad:
            from ase.data import chemical_symbols

            names = sorted({chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in bad})
            raise ValueError(f"element(s) {', '.join(names)} not supported by this model")

    def reference_energies(self, numbers: torch.Tensor) -> torch.Tensor:
        """(N,) E0 of each atom, eV."""
        return self.atomic_energies[numbers]

    def forward(self, graph: AtomGraph) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError
