"""SMACT compositional validity decided by a pruned search instead of SMACT's full enumeration.

``smact.screening.smact_validity`` tries every combination of oxidation states (``itertools.product`` over the
elements' sets) and stops at the first charge-neutral one that passes the Pauling electronegativity test. An
invalid composition therefore costs the full product: ~10⁶ combinations for a seven-element cell, tens of seconds,
and a thousand generated MP-20 cells took tens of minutes.

This module answers the same question — is there an assignment of one oxidation state per element with
Σ countᵢ·oxᵢ = 0 and every cation less electronegative than every anion? — by depth-first search over the
elements, pruning a branch as soon as (a) the charge still reachable by the remaining elements cannot cancel the
partial sum, or (b) the cations chosen so far are not all less electronegative than the anions chosen so far.
Both prunings only drop branches that contain no solution, so the verdict is SMACT's, with SMACT's data (its
oxidation-state sets, Pauling electronegativities and list of metals) and its rules: one element is valid, all
metals are valid (``include_alloys``), counts are reduced by their gcd, a missing electronegativity or an element
without oxidation states makes the composition invalid. ``tests/test_metrics_crystal.py`` checks the verdict
against ``smact_validity`` on hundreds of compositions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pymatgen.core import Composition


@dataclass(frozen=True)
class _Species:
    """One element of the composition: its reduced count, oxidation states and Pauling electronegativity."""

    count: int
    oxidation_states: tuple[int, ...]
    electronegativity: float


def smact_charge_balanced(composition: Composition, oxidation_state_set: str = "smact14") -> bool:
    """SMACT validity (``use_pauling_test=True, include_alloys=True``) of a composition.

    Args:
        composition: the composition (element counts, e.g. a cell's sites per element).
        oxidation_state_set: a SMACT set name ("smact14", "icsd16", "icsd24", "pymatgen_sp", "wiki").
    """
    import smact

    symbols = [element.symbol for element in composition.elements]
    if len(set(symbols)) == 1:
        return True
    if all(symbol in smact.metals for symbol in symbols):
        return True
    counts = [int(composition[symbol]) for symbol in symbols]
    divisor = math.gcd(*counts)
    attribute = f"oxidation_states_{'sp' if oxidation_state_set == 'pymatgen_sp' else oxidation_state_set}"
    species = []
    for symbol, count in zip(symbols, counts, strict=True):
        element = smact.Element(symbol)
        states = getattr(element, attribute)
        if not states or element.pauling_eneg is None:
            return False
        species.append(_Species(count // divisor, tuple(sorted(set(states))), float(element.pauling_eneg)))
    return _neutral_assignment_exists(tuple(species))


def _neutral_assignment_exists(species: tuple[_Species, ...]) -> bool:
    """Whether one state per species gives zero total charge with all cations less electronegative than anions."""
    # Elements with many states and large counts first: their choice narrows the reachable charge the most.
    ordered = sorted(species, key=lambda s: -s.count * (max(s.oxidation_states) - min(s.oxidation_states)))
    lowest_rest = [0] * (len(ordered) + 1)
    highest_rest = [0] * (len(ordered) + 1)
    for index in range(len(ordered) - 1, -1, -1):
        lowest_rest[index] = lowest_rest[index + 1] + ordered[index].count * min(ordered[index].oxidation_states)
        highest_rest[index] = highest_rest[index + 1] + ordered[index].count * max(ordered[index].oxidation_states)

    @functools.cache
    def search(index: int, charge: int, max_cation_eneg: float, min_anion_eneg: float) -> bool:
        if not lowest_rest[index] <= -charge <= highest_rest[index]:
            return False
        if index == len(ordered):
            return True
        current = ordered[index]
        for state in current.oxidation_states:
            cation_eneg, anion_eneg = max_cation_eneg, min_anion_eneg
            if state > 0:
                cation_eneg = max(cation_eneg, current.electronegativity)
            elif state < 0:
                anion_eneg = min(anion_eneg, current.electronegativity)
            if cation_eneg >= anion_eneg:
                continue
            if search(index + 1, charge + current.count * state, cation_eneg, anion_eneg):
                return True
        return False

    return search(0, 0, -math.inf, math.inf)
