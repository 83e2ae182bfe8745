"""Reference electronic-structure methods that label structures for training and validation.

* :mod:`matsim.reference.xtb` -- GFN2-xTB / GFN1-xTB through tblite (molecules and periodic cells).
* :mod:`matsim.reference.dft` -- Kohn-Sham DFT through PySCF (molecules; gpu4pyscf when CUDA is there).
* :mod:`matsim.reference.gcp` -- the geometrical counterpoise correction (gCP, s-dftd3) of small-basis DFT labels.
* :mod:`matsim.reference.labeller` -- label the frames of an extxyz file in parallel, resumably.

Both calculators read the total charge and spin multiplicity from the ``Atoms`` they are given (never from
calculator arguments), so one calculator object can label a Li+ and a PF6- frame in turn:

* total charge (e): ``atoms.info["charge"]``, else the sum of a per-atom ``formal_charge`` array, else 0
  (:func:`matsim.core.graph.total_charge`, the rule the force fields use too); it must be a whole number.
  ASE's ``initial_charges`` are ignored: they are partial charges, not a total charge.
* spin multiplicity 2S+1: ``atoms.info["multiplicity"]``, else the lowest one the electron count allows
  (1 for an even number of electrons, 2 for an odd one).

This package imports neither tblite, PySCF nor dftd3 (they are the optional ``[dft]`` extra); its submodules do.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from matsim.core.errors import MatsimError, StructureError
from matsim.core.graph import total_charge

__all__ = ["SCFNotConverged", "ChargeFromAtomsMixin", "charge_and_multiplicity"]


class SCFNotConverged(MatsimError, RuntimeError):
    """The self-consistent field did not converge: the structure has no trustworthy label."""


def charge_and_multiplicity(atoms: Atoms) -> tuple[int, int]:
    """Total charge (e) and spin multiplicity 2S+1 of ``atoms``, read as the module docstring says.

    Raises :class:`StructureError` for a fractional charge, or a multiplicity that is not a positive integer or does
    not fit the parity of the electron count.
    """
    charge = _integer_charge(atoms)
    return charge, _spin_multiplicity(atoms, charge)


def _integer_charge(atoms: Atoms) -> int:
    charge = total_charge(atoms)
    if not np.isclose(charge, round(charge), atol=1e-6):
        raise StructureError(f"the total charge must be a whole number of e for a reference calculation, got {charge}")
    return int(round(charge))


def _spin_multiplicity(atoms: Atoms, charge: int) -> int:
    n_electrons = int(atoms.numbers.sum()) - charge
    if n_electrons < 0:
        raise StructureError(f"a total charge of {charge} e leaves {n_electrons} electrons")
    if "multiplicity" not in atoms.info:
        return 1 + n_electrons % 2
    multiplicity = atoms.info["multiplicity"]
    if not float(multiplicity).is_integer() or multiplicity < 1:
        raise StructureError(f"info['multiplicity'] must be a positive integer, got {multiplicity!r}")
    multiplicity = int(multiplicity)
    if (multiplicity - 1) % 2 != n_electrons % 2 or multiplicity - 1 > n_electrons:
        raise StructureError(
            f"multiplicity {multiplicity} is impossible with {n_electrons} electrons (charge {charge})"
        )
    return multiplicity


class ChargeFromAtomsMixin:
    """ASE calculator mixin: a change of the total charge or multiplicity of the atoms invalidates cached results.

    ASE's own :meth:`~ase.calculators.calculator.Calculator.check_state` compares positions, numbers, cell, pbc and
    initial charges/magmoms only; ``info`` changes would otherwise return stale results.
    """

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's system changes, plus ``"charge"`` when the charge or multiplicity differs from the last calculation."""
        changes = super().check_state(atoms, tol)  # type: ignore[misc]
        previous = self.atoms  # type: ignore[attr-defined]
        if previous is not None and charge_and_multiplicity(previous) != charge_and_multiplicity(atoms):
            changes.append("charge")
        return changes

