"""matsim: machine-learned atomistic simulation.

Force fields (equivariant and attention potentials) exposed as ASE calculators, molecular dynamics of liquid
electrolytes, and generative models for crystals and molecules. Units are ASE's everywhere: eV, Å, amu, e.

Public entry points: :class:`AtomGraph`, :func:`load_model`, :class:`MatSimCalculator`, ``matsim.models.create``.
"""

from typing import Any

from matsim._version import __version__
from matsim.core.errors import MatsimError
from matsim.core.graph import AtomGraph

__all__ = ["__version__", "AtomGraph", "MatsimError", "MatSimCalculator", "load_model"]


def __getattr__(name: str) -> Any:
    """Import the calculator and model loading on first use (they pull in ASE's calculators and e3nn)."""
    if name == "MatSimCalculator":
        from matsim.calculator import MatSimCalculator

        return MatSimCalculator
    if name == "load_model":
        from matsim.models import load_model

        return load_model
    raise AttributeError(f"module 'matsim' has no attribute {name!r}")
