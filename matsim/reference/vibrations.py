"""Harmonic vibrational analysis of a molecule: finite-difference Hessian and dipole derivatives, translations and
rotations projected out, frequencies (cm⁻¹) and IR intensities (km/mol) in the double-harmonic approximation.

Why not :class:`ase.vibrations.Infrared` as is: it computes the same central differences, but keeps every one of the
3N modes (translations and rotations come out as small real or imaginary "frequencies" that the caller must guess
away), writes a cache directory per molecule, and does not expose the dipole derivatives. Here the six (five for a
linear molecule) rigid-body motions are projected out exactly, in mass-weighted coordinates, so a molecule has
exactly 3N-6 (3N-5) modes and any imaginary one is a real saddle-point signal, not numerical noise of a rotation.
The test suite checks the result against ``ase.vibrations.Infrared``.

Definitions (ASE units in, spectroscopic units out):

* Hessian ``H`` (3N, 3N) eV/Å²: central differences of the forces, ``H[i] = -(F(x + δe_i) - F(x - δe_i)) / 2δ``,
  symmetrised. Dipole derivatives ``dμ/dx`` (3N, 3) e from the same displaced points (2·3N single points in all).
* Mass-weighted Hessian ``M^-1/2 H M^-1/2`` restricted to the orthogonal complement of the rigid-body vectors
  (translations ``√m_i e_k``, rotations ``√m_i e_k × (r_i - R_com)``); its eigenvalues λ (eV/Å²/amu) give
  wavenumbers ``ν̃ = sign(λ) √|λ| · 521.47 cm⁻¹``: an imaginary mode is reported as a negative wavenumber.
* IR intensity of mode k: ``A_k = (N_A π / 3c²)/(4πε₀) |dμ/dQ_k|² = 974.88 km/mol × |dμ/dQ_k / (e amu^-1/2)|²``,
  with ``Q_k`` the normalised mass-weighted normal coordinate (the integrated molar absorption coefficient of the
  band; the same quantity Gaussian, ORCA and ASE's ``intensity_unit="km/mol"`` report).

For a charged molecule the dipole depends on the origin, but the derivatives along vibrational modes (which keep
the centre of mass fixed) do not, so intensities are well defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

__all__ = [
    "FD_STEP",
    "KM_PER_MOL",
    "WAVENUMBER_PER_SQRT_EIGENVALUE",
    "HarmonicModes",
    "finite_difference_derivatives",
    "harmonic_modes",
    "rigid_body_vectors",
]

#: Central-difference displacement, Å (ASE's ``Vibrations`` default: small enough for the harmonic limit, large
#: enough that SCF noise in the forces stays ~1e-3 of the Hessian elements).
FD_STEP: float = 0.01

#: cm⁻¹ per √(eV/Å²/amu): ν̃ = √λ / (2πc).
WAVENUMBER_PER_SQRT_EIGENVALUE: float = math.sqrt(units._e / (1e-20 * units._amu)) / (2 * math.pi * units._c * 100)

#: km/mol per (e²/amu): N_A π / (3c²) / (4πε₀) · e²/amu / (1000 m/km) = 974.88.
KM_PER_MOL: float = units._Nav * math.pi / (3 * units._c**2) / (4 * math.pi * units._eps0) * units._e**2 / units._amu / 1e3

#: Singular values below this (in √amu·Å) mark a rigid-body vector as dependent (linear molecules, single atoms).
_RIGID_BODY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class HarmonicModes:
    """Normal modes of one molecule, sorted by wavenumber.

    Attributes:
        frequencies: (M,) cm⁻¹, M = 3N-6 (3N-5 linear); imaginary modes as negative numbers, lowest first.
        intensities: (M,) km/mol, IR intensities of the modes.
        modes: (M, N, 3) normalised mass-weighted normal coordinates (dimensionless unit vectors in 3N space).
    """

    frequencies: np.ndarray
    intensities: np.ndarray
    modes: np.ndarray

    @property
    def n_imaginary(self) -> int:
        """Number of imaginary modes (negative wavenumbers)."""
        return int((self.frequencies < 0).sum())

    @property
    def lowest_frequency(self) -> float:
        """The lowest wavenumber, cm⁻¹ (the most negative one when there are imaginary modes); nan without modes."""
        return float(self.frequencies[0]) if len(self.frequencies) else math.nan


def finite_difference_derivatives(
    atoms: Atoms, calculator: Calculator, step: float = FD_STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Hessian (3N, 3N) eV/Å² (symmetrised) and dipole derivatives (3N, 3) e of ``atoms`` by central differences.

    Runs 6N single points with ``calculator`` on copies of ``atoms`` (whose ``info`` carries charge/multiplicity);
    ``atoms`` itself is not changed. Calculator errors (e.g. SCF failure) propagate.
    """
    n = 3 * len(atoms)
    hessian = np.empty((n, n))
    dipole_derivatives = np.empty((n, 3))
    displaced = atoms.copy()
    displaced.calc = calculator
    reference = atoms.get_positions().ravel()
    for i in range(n):
        forces, dipoles = [], []
        for sign in (1.0, -1.0):
            positions = reference.copy()
            positions[i] += sign * step
            displaced.set_positions(positions.reshape(-1, 3))
            forces.append(displaced.get_forces().ravel())
            dipoles.append(displaced.get_dipole_moment())
        hessian[i] = -(forces[0] - forces[1]) / (2 * step)
        dipole_derivatives[i] = (dipoles[0] - dipoles[1]) / (2 * step)
    return 0.5 * (hessian + hessian.T), dipole_derivatives


def rigid_body_vectors(atoms: Atoms) -> np.ndarray:
    """Orthonormal basis (3N, R) of mass-weighted translations and rotations; R = 6, 5 (linear) or 3 (one atom)."""
    masses = atoms.get_masses()
    sqrt_m = np.sqrt(masses)[:, None]
    centred = atoms.get_positions() - masses @ atoms.get_positions() / masses.sum()
    vectors = []
    for axis in np.eye(3):
        vectors.append((sqrt_m * axis).ravel())
        vectors.append((sqrt_m * np.cross(axis, centred)).ravel())
    u, singular, _ = np.linalg.svd(np.stack(vectors, axis=1), full_matrices=False)
    return u[:, singular > _RIGID_BODY_TOLERANCE * max(1.0, singular.max())]


def harmonic_modes(atoms: Atoms, hessian: np.ndarray, dipole_derivatives: np.ndarray) -> HarmonicModes:
    """Frequencies, IR intensities and normal modes from a Cartesian Hessian (3N, 3N) eV/Å² and dipole derivatives
    (3N, 3) e at the geometry of ``atoms`` (see the module docstring for the definitions)."""
    n_atoms = len(atoms)
    inv_sqrt_m = np.repeat(atoms.get_masses() ** -0.5, 3)
    weighted = inv_sqrt_m[:, None] * hessian * inv_sqrt_m[None, :]
    rigid = rigid_body_vectors(atoms)
    # Orthonormal basis of the vibrational subspace: the complement of the rigid-body vectors.
    q, _ = np.linalg.qr(np.concatenate([rigid, np.eye(3 * n_atoms)], axis=1))
    internal = q[:, rigid.shape[1] : 3 * n_atoms]
    eigenvalues, vectors = np.linalg.eigh(internal.T @ weighted @ internal)
    modes = internal @ vectors  # (3N, M) mass-weighted Cartesian normal coordinates
    frequencies = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * WAVENUMBER_PER_SQRT_EIGENVALUE
    dmu_dq = modes.T @ (inv_sqrt_m[:, None] * dipole_derivatives)  # (M, 3) e/√amu
    intensities = KM_PER_MOL * (dmu_dq**2).sum(axis=1)
    return HarmonicModes(frequencies=frequencies, intensities=intensities, modes=modes.T.reshape(-1, n_atoms, 3))
