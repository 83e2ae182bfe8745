"""The interface every generative model implements (CDVAE, UniMat, DiffSpectra).

A generative model is an ``nn.Module`` with two jobs:

- :meth:`GenerativeModel.loss` ``(batch) -> {"loss": total, term: value, ...}``: ``"loss"`` is the scalar the
  trainer minimises; the other entries are detached scalars it logs (``train_<term>_loss`` in ``metrics.csv``).
- :meth:`GenerativeModel.sample` ``(n, condition=None, generator=None, **settings) -> [object | None, ...]``:
  ``n`` new samples, ``None`` for a sample that failed to decode (it still counts). What a sample is, each model
  documents: pymatgen Structures for the crystal models (CDVAE, UniMat), rdkit Mols for DiffSpectra.

and class-level hooks that let one training loop and one ``matsim generate`` serve every model:

- :attr:`dataset_kind` and :meth:`load_dataset`: which ``data`` section its training config has (``"crystals"``:
  CDVAE CSV files; ``"spectra"``: ``SPECTRA.h5`` files) and how a data file is read;
- :meth:`collate`: a batch (an object with ``.to(device)`` and ``num_systems``) from dataset items;
- :meth:`data_hyperparameters`: hyperparameters taken from the training data (species, normalisation
  statistics, ...), filled in by the trainer where the config leaves them out and stored in the checkpoint;
- :attr:`sampler_settings`: a strict pydantic model of the keyword settings of :meth:`sample` (so that a typo in
  a generate config is one clear error naming the key); :attr:`condition_keys` and :meth:`check_condition` do
  the same for ``condition``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from matsim.core.config import StrictModel
from matsim.core.errors import ConfigError

if TYPE_CHECKING:  # crystal datasets need pymatgen, which molecule models (DiffSpectra) do not
    from matsim.datasets.crystals import CrystalBatch, CrystalDataset

__all__ = ["GenerativeModel", "is_generative"]


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of generative models (see the module docstring)."""

    #: Keyword settings of :meth:`sample` (validated with unknown keys rejected); subclasses override.
    sampler_settings: ClassVar[type[StrictModel]] = StrictModel
    #: Keys of ``condition`` the model understands (e.g. ``"num_atoms"``, ``"composition"``, ``"property"``).
    condition_keys: ClassVar[tuple[str, ...]] = ()
    #: The kind of training data (``"crystals"`` or ``"spectra"``): picks the ``data`` section of the training config.
    dataset_kind: ClassVar[str] = "crystals"

    @classmethod
    def load_dataset(cls, path: Path, **options: Any) -> Any:
        """The training dataset in ``path``; ``options``: the config's ``data`` section less its files and split
        (crystals: a CDVAE CSV file, read with ``property``, ``niggli``, ``max_rows``, ``cache``, ``cache_dir``)."""
        from matsim.datasets.crystals import CrystalDataset

        return CrystalDataset.from_csv(path, **options)

    @classmethod
    def training_set(cls, train: Any, held_out: Any, data: Any) -> Any:
        """The set the model trains on, from the split's training items ``train``, the items kept out of training
        ``held_out`` (validation, test) and the config's ``data`` section: ``train`` itself by default."""
        return train

    @classmethod
    def collate(cls, dataset: CrystalDataset, indices: Sequence[int]) -> CrystalBatch:
        """One training batch of the dataset items ``indices``."""
        return dataset.batch(indices)

    @classmethod
    def data_hyperparameters(cls, train: CrystalDataset, valid: CrystalDataset | None = None) -> dict[str, Any]:
        """Hyperparameters derived from the data (JSON-like values): statistics from ``train``, vocabularies
        (e.g. the elements) covering ``valid`` too. None by default."""
        return {}

    def check_condition(self, condition: Mapping[str, Any] | None) -> None:
        """Raise :class:`ConfigError` for a condition the model cannot honour (unknown key, bad value), so that a
        generation run fails before it samples anything. Subclasses extend it to check values."""
        unknown = sorted(set(condition or {}) - set(self.condition_keys))
        if unknown:
            raise ConfigError(f"condition.{unknown[0]}: unknown key (this model understands: "
                              f"{', '.join(self.condition_keys) or 'no conditions'})")

    @abc.abstractmethod
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Training loss of ``batch``: ``{"loss": scalar to minimise, other terms: detached scalars}``; an optional
        ``"selection"`` term is what validation ranks checkpoints and stops early on instead of ``"loss"`` (e.g.
        the loss without an auxiliary head that overfits while the generator still improves)."""

    @abc.abstractmethod
    def sample(self, n: int, condition: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> list[Any]:
        """``n`` new samples (``None`` where decoding failed; Structures for crystal models); ``settings`` follow
        :attr:`sampler_settings`."""


def is_generative(cls: type) -> bool:
    """Whether a registered model class is a :class:`GenerativeModel` (the trainer dispatches on this)."""
    return isinstance(cls, type) and issubclass(cls, GenerativeModel)


def composition_counts(formula: Any, species: Sequence[int]) -> dict[int, int]:
    """``{atomic number: atoms}`` of a ``condition.composition`` formula; a :class:`ConfigError` for an unreadable
    formula, fractional or non-positive counts, or an element outside ``species`` (the model's)."""
    from pymatgen.core import Composition, Element

    try:  # pymatgen reads unknown symbols as dummy species: Element() rejects them
        amounts = {Element(el).Z: c for el, c in Composition(str(formula)).get_el_amt_dict().items()}
    except Exception as exc:  # pymatgen raises several types for unreadable formulas and unknown symbols
        raise ConfigError(f"condition.composition: cannot read the formula {formula!r}") from exc
    if not amounts or any(abs(c - round(c)) > 1e-6 or c < 0.5 for c in amounts.values()):
        raise ConfigError(f"condition.composition: {formula!r} needs whole, positive numbers of atoms")
    counts = {z: int(round(c)) for z, c in amounts.items()}
    unknown = sorted(z for z in counts if z not in set(species))
    if unknown:
        raise ConfigError(f"condition.composition: {', '.join(Element.from_Z(z).symbol for z in unknown)} not "
                          "among the model's species")
    return counts

