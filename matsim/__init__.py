"""matsim: machine-learned atomistic simulation.

Force fields (equivariant and attention potentials) exposed as ASE calculators, molecular dynamics of liquid
electrolytes, and generative models for crystals and molecules. Units are ASE's everywhere: eV, Å, amu, e.
"""

from matsim._version import __version__
from matsim.core.graph import AtomGraph
from matsim.core.errors import MatsimError

__all__ = ["__version__", "AtomGraph", "MatsimError"]
