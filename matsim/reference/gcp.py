"""Geometrical counterpoise correction (gCP, Kruse & Grimme, J. Chem. Phys. 136, 154101 (2012)) of DFT labels.

A small basis such as def2-SVP lets each molecule borrow its neighbours' basis functions, so every intermolecular
contact binds too strongly (the basis-set superposition error, BSSE). In a liquid that error adds up over all
contacts and the density comes out too high, and a D3 term added on top counts part of the same attraction twice.
gCP is an atom-pairwise repulsive energy, fitted per functional and basis, that removes the BSSE without the
2n+1 ghost-atom calculations of a Boys-Bernardi counterpoise correction; its energy, forces and virial are analytic.

We use the gCP of s-dftd3 (the ``dftd3`` Python package, LGPL-3.0) instead of rewriting it. What this module adds:

* PySCF basis names mapped to gCP's (``def2-SVP`` -> ``svp``...), and a :class:`ConfigError` for a functional/basis
  pair gCP has no parameters for (s-dftd3 silently returns zero then).
* ``scale``: a factor on the whole correction, for a gCP calibrated against Boys-Bernardi counterpoise energies of
  the system at hand (``benchmarks/electrolyte/bsse.py`` measures it); 1 is the published gCP.
* :class:`GCPCalculator` (ASE) and :func:`add_gcp_to_labels` (corrects energies and forces already in a file).

Units: energies eV, forces eV/Å, stress eV/Å³ (ASE sign convention).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from matsim.core.errors import ConfigError

__all__ = ["GCPCalculator", "gcp_basis_name", "gcp_level", "add_gcp_to_labels"]

#: PySCF/Turbomole basis names (lower case) -> gCP's basis keywords.
_GCP_BASIS = {
    "def2-svp": "svp",
    "def2-sv(p)": "sv(p)",
    "def2-tzvp": "def2tzvp",
    "6-31g*": "631gd",
    "6-31g(d)": "631gd",
    "cc-pvdz": "ccdz",
    "aug-cc-pvdz": "accdz",
}


def gcp_basis_name(basis: str) -> str:
    """gCP's keyword for a basis set name (``"def2-SVP"`` -> ``"svp"``); :class:`ConfigError` if it has none."""
    try:
        return _GCP_BASIS[basis.lower()]
    except KeyError:
        known = ", ".join(sorted(_GCP_BASIS))
        raise ConfigError(f"no gCP parameters for basis {basis!r}; gCP knows {known}") from None


def gcp_level(xc: str, basis: str, scale: float = 1.0) -> str:
    """The level of theory of gCP-corrected labels as written in papers, e.g. ``"B3LYP-gCP/def2-SVP"``."""
    tag = "gCP" if scale == 1.0 else f"gCP({scale:g})"
    return f"{xc.upper()}-{tag}/{basis}"


class GCPCalculator(Calculator):
    """gCP energy, forces and (periodic cells) stress of a structure, as an ASE calculator.

    Args:
        xc: the functional the correction belongs to (``"b3lyp"``, ``"hf"``...).
        basis: the orbital basis in PySCF naming (``"def2-SVP"``...).
        scale: factor on the whole correction (1 = published gCP).

    Raises :class:`ConfigError` when gCP has no parameters for ``xc``/``basis``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, xc: str = "b3lyp", basis: str = "def2-SVP", scale: float = 1.0) -> None:
        if not np.isfinite(scale) or scale < 0:
            raise ConfigError(f"gCP scale must be a non-negative number, got {scale}")
        super().__init__(xc=xc, basis=basis, scale=scale)
        _check_parametrised(xc.lower(), gcp_basis_name(basis))

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Evaluate the correction for ``self.atoms`` (ASE calculator protocol)."""
        super().calculate(atoms, properties, system_changes)
        p = self.parameters
        result = _counterpoise(self.atoms, p.xc.lower(), gcp_basis_name(p.basis))
        energy = p.scale * float(result["energy"]) * Hartree
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": -p.scale * np.asarray(result["gradient"]) * (Hartree / Bohr),
        }
        if self.atoms.pbc.all():
            virial = p.scale * np.asarray(result["virial"]) * Hartree  # (3, 3), eV
            stress = virial / self.atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]


def add_gcp_to_labels(frames: Sequence[Atoms], xc: str, basis: str, scale: float = 1.0) -> list[Atoms]:
    """Copies of labelled ``frames`` with the gCP energy and forces added to their reference energy and forces.

    Every frame must carry an energy and forces as calculator results (what ``matsim data label`` writes); other
    results (charges, dipole) are kept unchanged. ``info["label_level"]`` becomes e.g. ``"B3LYP-gCP/def2-SVP"``.
    Raises :class:`ConfigError` for a frame without labels or already corrected.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    correction = GCPCalculator(xc=xc, basis=basis, scale=scale)
    level = gcp_level(xc, basis, scale)
    corrected = []
    for index, frame in enumerate(frames):
        if frame.calc is None or "energy" not in frame.calc.results or "forces" not in frame.calc.results:
            raise ConfigError(f"frame {index} has no reference energy and forces to correct")
        if "gCP" in str(frame.info.get("label_level", "")):
            raise ConfigError(f"frame {index} is already gCP-corrected ({frame.info['label_level']})")
        results = dict(frame.calc.results)
        probe = frame.copy()
        probe.calc = correction
        results["energy"] = results["energy"] + probe.get_potential_energy()
        if "free_energy" in results:
            results["free_energy"] = results["energy"]
        results["forces"] = results["forces"] + probe.get_forces()
        if "stress" in results and frame.pbc.all():
            results["stress"] = results["stress"] + probe.get_stress()
        out = frame.copy()
        out.info["label_level"] = level
        out.calc = SinglePointCalculator(out, **results)
        corrected.append(out)
    return corrected


def _counterpoise(atoms: Atoms, method: str, basis: str) -> dict:
    """s-dftd3's gCP result (atomic units: energy Eh, gradient Eh/Bohr, virial Eh) for ``atoms``."""
    from dftd3.interface import GeometricCounterpoise

    lattice = atoms.cell.array / Bohr if atoms.pbc.any() else None
    periodic = atoms.pbc if atoms.pbc.any() else None
    model = GeometricCounterpoise(atoms.numbers, atoms.positions / Bohr, lattice, periodic, method=method, basis=basis)
    return model.get_counterpoise(grad=True)


def _check_parametrised(method: str, basis: str) -> None:
    """:class:`ConfigError` when s-dftd3 has no gCP parameters for the pair (it returns exactly zero then)."""
    probe = Atoms("OH2OH2", positions=[(0, 0, 0), (0.96, 0, 0), (-0.24, 0.93, 0),
                                        (2.9, 0, 0), (3.3, 0.8, 0), (3.3, -0.8, 0)])
    if float(_counterpoise(probe, method, basis)["energy"]) == 0.0:
        raise ConfigError(f"s-dftd3 has no gCP parameters for {method}/{basis}")
