"""Metrics as pure functions on pymatgen Structures and arrays (never imports models, training, MD or the CLI).

``crystal``: validity, coverage, EMDs, match rate / RMSE, uniqueness, novelty (CDVAE definitions).
``hull``: energy above hull against any ASE-calculator oracle, stable and S.U.N. fractions.
"""

from matsim.metrics.crystal import (
    COVERAGE_CUTOFFS,
    CrystalMetrics,
    composition_validity,
    evaluate_crystals,
    read_csv_structures,
    read_structures,
    structure_validity,
)
from matsim.metrics.hull import (
    EnergyOracle,
    StabilityMetrics,
    chgnet_calculator,
    energy_above_hull,
    hull_stability,
    relax,
)

__all__ = [
    "COVERAGE_CUTOFFS",
    "CrystalMetrics",
    "EnergyOracle",
    "StabilityMetrics",
    "chgnet_calculator",
    "composition_validity",
    "energy_above_hull",
    "evaluate_crystals",
    "hull_stability",
    "read_csv_structures",
    "read_structures",
    "relax",
    "structure_validity",
]
