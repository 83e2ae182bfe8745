"""Physical constants and conversions in ASE units (eV, Å, amu, e; time in ASE units only inside ASE calls).

Every constant is derived from :mod:`ase.units` so that matsim and ASE never disagree.
"""

from __future__ import annotations

from ase import units as _ase

#: Coulomb constant 1/(4π ε0) in eV·Å/e² (≈ 14.399645).
COULOMB_EV_A: float = _ase.Hartree * _ase.Bohr

#: Multiply a density in amu/Å³ by this to get g/cm³.
AMU_PER_A3_TO_G_PER_CM3: float = _ase._amu * 1e3 / 1e-24

#: Multiply a stress/pressure in eV/Å³ by this to get GPa.
EV_PER_A3_TO_GPA: float = 1.0 / _ase.GPa

#: Multiply a pressure in bar by this to get eV/Å³.
BAR_TO_EV_PER_A3: float = _ase.bar

#: Boltzmann constant in eV/K.
KB_EV_PER_K: float = _ase.kB

#: One femtosecond in ASE time units (use only when calling ASE dynamics).
FS: float = _ase.fs

#: Elementary charge in coulomb.
ELEMENTARY_CHARGE_C: float = _ase._e

#: Avogadro's number per mole.
AVOGADRO: float = _ase._Nav
