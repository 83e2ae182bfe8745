"""Kohn-Sham DFT single points through PySCF, as an ASE calculator (molecules and clusters only).

PySCF is the scriptable, open-source quantum-chemistry code with analytic DFT gradients and density fitting, and
gpu4pyscf runs the same objects on a GPU; we wrap it instead of rewriting anything. Choices:

* Closed shells (multiplicity 1) use restricted KS, open shells unrestricted KS; ``unrestricted=True`` forces UKS.
  Charge and multiplicity come from the atoms (:func:`matsim.reference.charge_and_multiplicity`).
* No dispersion correction, on purpose: BAMBOO-style force fields learn short-range + electrostatics from DFT
  without D3 and add DFT-D3(BJ) at inference, so the labels must not contain it. An ``xc`` with a ``-d3``/``-d4``
  suffix is refused.
* Density fitting (PySCF's default auxiliary basis, def2-universal-jkfit for def2 bases) is on by default: several
  times faster with energy errors of order 1e-5 Eh.
* Forces from analytic gradients (without the DFT grid response, as PySCF does by default: differences to finite
  differences of order 1e-3 eV/Å).
* Atomic charges: meta-Löwdin populations (:meth:`pyscf.scf.hf.SCF.mulliken_meta`), i.e. Mulliken analysis in
  meta-Löwdin orthogonalised atomic orbitals. Core PySCF has no Hirshfeld or CHELPG charges (gpu4pyscf's CHELPG runs
  only on a GPU, which would make labels depend on the machine); meta-Löwdin charges are the least basis-set-dependent
  scheme it offers, unlike plain Mulliken. They sum to the total charge.
* Dipole about the origin of the coordinates (origin-dependent for a charged system, as in tblite), in e·Å.
* GPU: when gpu4pyscf imports and a CUDA device is visible, the SCF and the gradient run on the GPU
  (``mf.to_gpu()``); charges and the dipole are then evaluated on the CPU from the converged orbitals. This branch is
  not exercised by the CPU test suite.

Cost (2 CPU cores, B3LYP/def2-SVP, density fitting): ethylene carbonate ~12 s, a 30-atom cluster ~5 min and 3.6 GB.
PySCF's memory ceiling per process is set by the environment variable ``PYSCF_MAX_MEMORY`` (MB, default 4000).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree
from pyscf import dft, gto
from pyscf.lib.exceptions import BasisNotFoundError

from matsim.core.errors import ConfigError, StructureError
from matsim.reference import ChargeFromAtomsMixin, SCFNotConverged, charge_and_multiplicity

__all__ = ["PySCFCalculator", "gpu4pyscf_available"]

_DISPERSION_SUFFIX = re.compile(r"-d[34]", re.IGNORECASE)


class PySCFCalculator(ChargeFromAtomsMixin, Calculator):
    """KS-DFT energy, forces, atomic charges and dipole of a molecule or cluster.

    Args:
        xc: exchange-correlation functional in PySCF/libxc naming (``"b3lyp"``, ``"pbe0"``, ``"wb97x"``...).
        basis: orbital basis set name (``"def2-SVP"``, ``"def2-TZVP"``, ``"sto-3g"``...).
        density_fit: density fitting of the Coulomb and exchange integrals.
        unrestricted: ``None`` chooses RKS for singlets and UKS otherwise; ``True`` always UKS.
        max_cycle: SCF iterations before :class:`SCFNotConverged` is raised.
        conv_tol: SCF energy convergence threshold, Eh.

    Results: ``energy`` / ``free_energy`` (eV), ``forces`` (N, 3) eV/Å, ``charges`` (N,) e (meta-Löwdin),
    ``dipole`` (3,) e·Å; every calculation computes all of them (the gradient costs about one more SCF).
    Periodic input raises :class:`StructureError`.
    """

    implemented_properties = ["energy", "free_energy", "forces", "charges", "dipole"]

    def __init__(
        self,
        xc: str = "b3lyp",
        basis: str = "def2-SVP",
        density_fit: bool = True,
        unrestricted: bool | None = None,
        max_cycle: int = 100,
        conv_tol: float = 1e-9,
    ) -> None:
        _check_xc(xc)
        if max_cycle < 1:
            raise ConfigError(f"max_cycle must be at least 1, got {max_cycle}")
        super().__init__(
            xc=xc, basis=basis, density_fit=density_fit, unrestricted=unrestricted, max_cycle=max_cycle,
            conv_tol=conv_tol,
        )

    @property
    def level_of_theory(self) -> str:
        """Functional and basis as written in papers, e.g. ``"B3LYP/def2-SVP"``."""
        return f"{self.parameters.xc.upper()}/{self.parameters.basis}"

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run the SCF, the analytic gradient and the population analysis (ASE calculator protocol)."""
        super().calculate(atoms, properties, system_changes)
        mol = build_molecule(self.atoms, self.parameters.basis)
        on_gpu = gpu4pyscf_available()
        mf = self._converged_scf(mol, on_gpu)
        gradient = mf.nuc_grad_method().kernel()  # Eh/Bohr, (N, 3)
        if on_gpu:  # population analysis and dipole on the CPU, from the converged orbitals
            import cupy

            gradient = cupy.asnumpy(gradient)
            mf = mf.to_cpu()
        energy = float(mf.e_tot) * Hartree
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": -np.asarray(gradient) * (Hartree / Bohr),
            "charges": np.asarray(mf.mulliken_meta(verbose=0)[1]),
            "dipole": np.asarray(mf.dip_moment(unit="AU", verbose=0)) * Bohr,
        }

    def _converged_scf(self, mol: gto.Mole, on_gpu: bool) -> Any:
        """Run the SCF of ``mol`` (through gpu4pyscf if ``on_gpu``); :class:`SCFNotConverged` unless it converged."""
        p = self.parameters
        kind = dft.UKS if p.unrestricted or mol.spin != 0 else dft.RKS
        mf = kind(mol, xc=p.xc)
        if p.density_fit:
            mf = mf.density_fit()
        mf.max_cycle = p.max_cycle
        mf.conv_tol = p.conv_tol
        if on_gpu:
            mf = mf.to_gpu()
        mf.kernel()
        if not mf.converged:
            raise SCFNotConverged(
                f"{self.level_of_theory} SCF did not converge in {p.max_cycle} cycles "
                f"({self.atoms.get_chemical_formula()}, charge {mol.charge}, multiplicity {mol.spin + 1})"
            )
        return mf


def build_molecule(atoms: Atoms, basis: str) -> gto.Mole:
    """A PySCF molecule (Å input, no symmetry, silent) with the charge and multiplicity of ``atoms``.

    Raises :class:`StructureError` for periodic input and :class:`ConfigError` for a basis missing for an element.
    """
    if atoms.pbc.any():
        raise StructureError("PySCF reference calculations take molecules or clusters only, not periodic cells")
    charge, multiplicity = charge_and_multiplicity(atoms)
    try:
        return gto.M(
            atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist())),
            basis=basis,
            charge=charge,
            spin=multiplicity - 1,
            unit="Angstrom",
            verbose=0,
        )
    except BasisNotFoundError as exc:
        raise ConfigError(f"basis {basis!r}: {exc}") from exc


def gpu4pyscf_available() -> bool:
    """True when gpu4pyscf is importable and CUDA reports at least one device."""
    if importlib.util.find_spec("gpu4pyscf") is None:
        return False
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:
        return False


def _check_xc(xc: str) -> None:
    """Raise :class:`ConfigError` for a functional libxc does not know or one that carries a dispersion correction."""
    if _DISPERSION_SUFFIX.search(xc):
        raise ConfigError(
            f"xc {xc!r} includes a dispersion correction; reference labels are computed without it "
            "(DFT-D3(BJ) is added at inference)"
        )
    try:
        dft.libxc.parse_xc(xc)
    except KeyError as exc:
        raise ConfigError(f"unknown exchange-correlation functional {xc!r}") from exc
