"""Random structure search: random symmetric crystals of given compositions, the baseline of the generative models.

UniMat (Yang et al., ICLR 2024) compares its samples with random structure search at the same compositions; this
module makes those candidates so that ``matsim generate`` can relax and score them exactly like model samples
(``baseline: random_search`` in a generate config, see :mod:`matsim.generate.config`).

One candidate = one cell composition (atoms per cell, e.g. ``Sr2Ti2O6``) and an attempt loop:

1. the space groups compatible with the composition are those of ``settings.space_groups`` (all 230 by default)
   whose Wyckoff multiplicities can hold the atom counts of every element (pyxtal's ``Group.check_compatible``,
   counts of the conventional cell, which pyxtal builds);
2. each attempt draws one of them uniformly and asks pyxtal for a random crystal (random lattice with a volume of
   ``volume_factor`` × the sum of the atomic volumes, random Wyckoff sites, pyxtal's minimum interatomic distances);
3. the first valid crystal with exactly the requested composition is the candidate; after ``max_attempts``
   attempts, or once ``timeout_s`` has passed, the candidate is a failure: ``None`` with the reason. Failures keep
   their place, so denominators include them.

The time limit matters: one failing pyxtal call can run for tens of seconds (its own loops try 40 lattices × 10
placements before giving up; seen: 19 s for Na8Cl8 at a volume factor of 0.05). On the main thread of a POSIX
process a running call is interrupted at the deadline (``SIGALRM`` through ``signal.setitimer``; an outer timer is
restored afterwards); elsewhere (other threads, Windows) the limit is checked between attempts only.

Every candidate has its own random stream, ``numpy.random.default_rng([seed, 0, index])``, so a candidate depends on
the seed and its index only (not on the batch size or on earlier failures): runs are reproducible and can be split.

Why pyxtal: it is the maintained library for random crystals under space-group constraints (Wyckoff sites,
tolerance matrix, random lattices), used by the crystal-structure-prediction codes; writing our own would repeat its
Wyckoff tables. It is imported only when candidates are made, so configs and the rest of matsim load without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator
from pymatgen.core import Composition, Element, Structure

from matsim.core.config import StrictModel
from matsim.core.errors import ConfigError

__all__ = [
    "RandomCandidate",
    "RandomSearchSettings",
    "cell_composition",
    "check_compositions",
    "compatible_space_groups",
    "dataset_compositions",
    "draw_compositions",
    "random_structures",
]

#: A composition as the API takes it: a formula (atoms per cell as written), a Composition, or (formula, units).
CompositionLike = str | Composition | tuple[str | Composition, int]

# Stream labels of numpy SeedSequence entropy ``[seed, stream, ...]``: one stream per candidate, one for draws.
_CANDIDATE_STREAM = 0
_DRAW_STREAM = 1


class RandomSearchSettings(StrictModel):
    """Settings of the random-search baseline (the ``sampler`` section of a ``baseline: random_search`` config).

    ``volume_factor``: pyxtal's ``factor``, the cell volume over the sum of atomic volumes (pyxtal's default 1.1).
    ``max_attempts``: pyxtal calls per candidate, each with a freshly drawn space group, before it counts as failed.
    ``timeout_s``: wall-clock budget of one candidate in s (see the module docstring).
    ``space_groups``: the space groups to draw from (International numbers, 1–230); all by default.
    ``max_atoms``: the largest cell accepted (atoms); pyxtal gets slow for large cells (~1.5 s for 120 atoms in P1).
    """

    volume_factor: float = Field(1.1, gt=0.0)
    max_attempts: int = Field(20, ge=1)
    timeout_s: float = Field(30.0, gt=0.0)
    space_groups: list[int] | None = None
    max_atoms: int = Field(100, ge=1)

    @field_validator("space_groups")
    @classmethod
    def _known_groups(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one space group (or null for all 230)")
            bad = [g for g in value if not 1 <= g <= 230]
            if bad:
                raise ValueError(f"space groups are numbered 1 to 230, got {bad}")
        return value


@dataclass(frozen=True)
class RandomCandidate:
    """One random-search candidate: ``structure`` (``None`` on failure), the space group it was built in, the
    pyxtal attempts spent, the wall time in s and, for a failure, the last error."""

    composition: Composition
    structure: Structure | None
    space_group: int | None
    attempts: int
    time_s: float
    error: str | None = None


def cell_composition(spec: CompositionLike, formula_units: int = 1) -> Composition:
    """The composition of one cell (whole numbers of atoms): ``spec`` times ``formula_units``.

    ``spec`` is a formula (``"SrTiO3"``, ``"Sr2Ti2O6"``: atoms as written), a pymatgen ``Composition``, or a
    ``(formula, formula_units)`` pair. A :class:`ConfigError` for an unreadable formula, an unknown element, or a
    fractional or non-positive number of atoms.
    """
    if isinstance(spec, tuple):
        spec, formula_units = spec
    if not isinstance(formula_units, int) or formula_units < 1:
        raise ConfigError(f"composition {spec}: formula units must be a positive whole number, got {formula_units!r}")
    try:  # pymatgen reads unknown symbols as dummy species: Element() rejects them
        composition = spec if isinstance(spec, Composition) else Composition(str(spec))
        amounts = {Element(str(el)).symbol: n for el, n in composition.get_el_amt_dict().items()}
    except Exception as exc:  # pymatgen raises several types for unreadable formulas and unknown symbols
        raise ConfigError(f"composition {spec!r}: cannot read the formula (unknown element?)") from exc
    if not amounts or any(n <= 0 or abs(n - round(n)) > 1e-6 for n in amounts.values()):
        raise ConfigError(f"composition {spec!r}: needs whole, positive numbers of atoms per cell")
    return Composition({el: int(round(n)) * formula_units for el, n in amounts.items()})


@functools.lru_cache(maxsize=None)
def _group(number: int) -> Any:
    """pyxtal's ``Group`` of a space group (built once: ~4 ms each)."""
    from pyxtal.symmetry import Group

    return Group(number)


@functools.lru_cache(maxsize=4096)
def _compatible(counts: tuple[int, ...], allowed: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(g for g in allowed if _group(g).check_compatible(list(counts))[0])


def compatible_space_groups(composition: Composition, space_groups: Sequence[int] | None = None) -> tuple[int, ...]:
    """The space groups (of ``space_groups``, default all 230) whose Wyckoff positions can hold the atom counts of
    ``composition`` in the conventional cell."""
    _require_pyxtal()
    counts = tuple(sorted(int(n) for n in composition.get_el_amt_dict().values()))
    allowed = tuple(sorted(set(space_groups))) if space_groups is not None else tuple(range(1, 231))
    return _compatible(counts, allowed)


def check_compositions(compositions: Sequence[CompositionLike],
                       settings: RandomSearchSettings | None = None) -> list[Composition]:
    """Read ``compositions`` (see :func:`cell_composition`) and check that each can be made under ``settings``.

    Raises :class:`ConfigError` (naming the composition) for one with more than ``max_atoms`` atoms or one that no
    allowed space group fits, so that a run fails before it makes anything.
    """
    settings = settings or RandomSearchSettings()
    if not compositions:
        raise ConfigError("random search: no compositions given")
    out = [cell_composition(spec) for spec in compositions]
    for composition in dict.fromkeys(out):  # each distinct one, in order of appearance
        atoms = int(composition.num_atoms)
        if atoms > settings.max_atoms:
            raise ConfigError(f"composition {composition.formula}: {atoms} atoms per cell is more than "
                              f"max_atoms = {settings.max_atoms}")
        if not compatible_space_groups(composition, settings.space_groups):
            allowed = "any space group" if settings.space_groups is None else f"space groups {settings.space_groups}"
            raise ConfigError(f"composition {composition.formula}: no Wyckoff positions of {allowed} hold these atom "
                              "counts")
    return out


def dataset_compositions(path: str | Path) -> list[Composition]:
    """The cell composition (atoms as in the cell) of every crystal of a CDVAE-style CSV, in row order."""
    from matsim.datasets.crystals import CrystalDataset

    dataset = CrystalDataset.from_csv(path)
    batch = dataset.batch(range(len(dataset)))
    out = []
    for types in batch.atom_types.split(batch.num_atoms.tolist()):
        numbers, counts = np.unique(types.numpy(), return_counts=True)
        out.append(Composition({Element.from_Z(int(z)).symbol: int(c) for z, c in zip(numbers, counts)}))
    return out


def draw_compositions(pool: Sequence[Composition], n: int, seed: int = 0) -> list[Composition]:
    """``n`` compositions drawn uniformly with replacement from ``pool`` (e.g. :func:`dataset_compositions` of the
    training set, so candidates follow its composition distribution); reproducible for a given ``seed`` (≥ 0)."""
    if not pool:
        raise ConfigError("random search: the composition pool is empty")
    rng = np.random.default_rng([_check_seed(seed), _DRAW_STREAM])
    return [pool[int(i)] for i in rng.integers(0, len(pool), size=n)]


def random_structures(compositions: Sequence[CompositionLike], seed: int = 0,
                      settings: RandomSearchSettings | None = None, start: int = 0) -> list[RandomCandidate]:
    """One random symmetric crystal per entry of ``compositions`` (repeat an entry for several candidates).

    Args:
        compositions: cell compositions (see :func:`cell_composition`); checked first (:func:`check_compositions`).
        seed: run seed (≥ 0); candidate ``start + i`` uses the stream ``[seed, 0, start + i]``.
        settings: attempt limits, volume factor and allowed space groups (:class:`RandomSearchSettings`).
        start: index of the first candidate in the run (to continue a run in batches with the same streams).

    Returns:
        One :class:`RandomCandidate` per composition, in order; failures have ``structure = None``.
    """
    settings = settings or RandomSearchSettings()
    _check_seed(seed)
    cells = check_compositions(compositions, settings)
    return [_one_candidate(cell, np.random.default_rng([seed, _CANDIDATE_STREAM, start + i]), settings)
            for i, cell in enumerate(cells)]


def _one_candidate(composition: Composition, rng: np.random.Generator,
                   settings: RandomSearchSettings) -> RandomCandidate:
    from pyxtal import pyxtal

    groups = compatible_space_groups(composition, settings.space_groups)
    species = [el.symbol for el in composition.elements]
    counts = [int(composition[el]) for el in composition.elements]
    start = time.monotonic()
    error = "no attempt made"
    for attempt in range(1, settings.max_attempts + 1):
        group = int(groups[rng.integers(len(groups))])
        crystal = pyxtal()
        try:
            with (_deadline(settings.timeout_s - (time.monotonic() - start)), warnings.catch_warnings(),
                  contextlib.redirect_stdout(sys.stderr)):
                warnings.simplefilter("ignore")
                crystal.from_random(3, _group(group), species, counts, factor=settings.volume_factor, max_count=1,
                                    random_state=rng)
                structure = crystal.to_pymatgen() if crystal.valid else None
        except _Timeout:
            error = f"space group {group}: interrupted at the time limit"
        except Exception as exc:  # pyxtal raises many types (its own errors, RuntimeError, ValueError) on a bad try
            error = f"space group {group}: {type(exc).__name__}: {exc}"
        else:
            if structure is not None and structure.composition == composition:
                return RandomCandidate(composition, structure, group, attempt, time.monotonic() - start)
            error = (f"space group {group}: no valid crystal" if structure is None else
                     f"space group {group}: pyxtal made {structure.composition.formula}")
        if time.monotonic() - start > settings.timeout_s:
            return RandomCandidate(composition, None, None, attempt, time.monotonic() - start,
                                   f"timeout after {attempt} attempts ({settings.timeout_s:g} s); last: {error}")
    return RandomCandidate(composition, None, None, settings.max_attempts, time.monotonic() - start,
                           f"{settings.max_attempts} attempts failed; last: {error}")


class _Timeout(BaseException):
    """Raised into a pyxtal call at its deadline (a BaseException, so that pyxtal's ``except Exception`` blocks
    let it through)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`_Timeout` in the block after ``seconds`` (s), on the main thread of a POSIX process; a no-op
    elsewhere. An outer ``ITIMER_REAL`` timer and ``SIGALRM`` handler are restored (less the time spent)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Timeout

    previous_handler = signal.signal(signal.SIGALRM, expire)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    entered = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay > 0.0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - entered), 1e-3),
                             outer_interval)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"random search: seed must be a whole number ≥ 0, got {seed!r}")
    return seed


def _require_pyxtal() -> None:
    try:
        importlib.import_module("pyxtal")
    except ImportError as exc:
        raise ConfigError("the random-search baseline needs pyxtal: pip install 'matsim[crystals]' (or pyxtal)") from exc
