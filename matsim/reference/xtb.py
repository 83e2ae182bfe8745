"""GFN2-xTB and GFN1-xTB through tblite, as an ASE calculator that takes charge and spin from the atoms.

tblite is the maintained library implementation of the GFN-xTB Hamiltonians (the xtb program's successor) with an
ASE calculator, periodic boundary conditions and stress; we wrap :class:`tblite.ase.TBLite` instead of rewriting
anything. The wrapper adds what the reference labels need:

* the total charge and multiplicity are passed on every calculation, read from the atoms
  (:func:`matsim.reference.charge_and_multiplicity`); tblite itself would silently compute a Li+ or PF6- neutral;
* SCF non-convergence raises :class:`~matsim.reference.SCFNotConverged` (tblite raises ASE's generic
  ``CalculationFailed``), so a labeller can skip the frame instead of writing a wrong label.

Results (ASE units): ``energy`` / ``free_energy`` (eV), ``energies`` (N,) eV per atom, ``forces`` (N, 3) eV/Å,
``charges`` (N,) e (Mulliken charges of the xTB wavefunction, summing to the total charge), ``dipole`` (3,) e·Å about
the origin of the coordinates (origin-dependent for a charged system), and for periodic cells ``stress`` (6,) eV/Å³
in ASE's Voigt order and sign.

Speed: the tblite wheel links reference LAPACK; preloading OpenBLAS gives identical energies 3.5-7x faster
(``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0`` after
``apt-get install libopenblas0-pthread``). A 30-atom cluster takes about 0.1 s.
"""

from __future__ import annotations

from typing import Sequence

from ase import Atoms
from ase.calculators.calculator import CalculationFailed, all_changes
from tblite.ase import TBLite

from matsim.core.errors import ConfigError
from matsim.reference import ChargeFromAtomsMixin, SCFNotConverged, charge_and_multiplicity

__all__ = ["XTB_METHODS", "XTBCalculator"]

#: matsim method names and tblite's names for them.
XTB_METHODS: dict[str, str] = {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB"}


class XTBCalculator(ChargeFromAtomsMixin, TBLite):
    """GFN-xTB single points (energy, forces, charges, dipole, stress for periodic cells) of charged or neutral systems.

    Args:
        method: ``"gfn2"`` or ``"gfn1"``.
        max_iterations: SCF iterations before :class:`SCFNotConverged` is raised.
        accuracy: tblite's numerical accuracy factor (smaller is tighter).
        electronic_temperature: Fermi smearing temperature, K.

    Example::

        atoms = molecule("H2O"); atoms.info["charge"] = 0
        atoms.calc = XTBCalculator("gfn2")
        atoms.get_forces()  # (3, 3) eV/Å
    """

    def __init__(
        self,
        method: str = "gfn2",
        max_iterations: int = 250,
        accuracy: float = 1.0,
        electronic_temperature: float = 300.0,
    ) -> None:
        if method not in XTB_METHODS:
            raise ConfigError(f"unknown xTB method {method!r}; choose one of {', '.join(XTB_METHODS)}")
        if max_iterations < 1:
            raise ConfigError(f"max_iterations must be at least 1, got {max_iterations}")
        super().__init__(
            method=XTB_METHODS[method],
            max_iterations=max_iterations,
            accuracy=accuracy,
            electronic_temperature=electronic_temperature,
            verbosity=0,
        )

    @property
    def level_of_theory(self) -> str:
        """The method as written in papers, e.g. ``"GFN2-xTB"``."""
        return self.parameters.method

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run one tblite single point with the charge and multiplicity of ``atoms`` (ASE calculator protocol)."""
        atoms = self.atoms if atoms is None else atoms
        charge, multiplicity = charge_and_multiplicity(atoms)
        self.set(charge=charge, multiplicity=multiplicity)
        try:
            super().calculate(atoms, properties, list(system_changes))
        except CalculationFailed as exc:
            if "SCF not converged" in str(exc):
                raise SCFNotConverged(
                    f"{self.level_of_theory} SCF did not converge in {self.parameters.max_iterations} iterations "
                    f"({atoms.get_chemical_formula()}, charge {charge})"
                ) from exc
            raise
