"""Reference IR spectra of molecules from SMILES: rdkit conformer → optimisation → harmonic IR → broadened spectrum.

Pipeline (:func:`ir_from_smiles`):

1. **Conformer** (:func:`conformer_from_smiles`): rdkit adds hydrogens, embeds :data:`N_CONFORMERS` conformers with
   ETKDGv3 (seeded, so the same SMILES always gives the same geometry), optimises them with MMFF94 (UFF when MMFF
   has no parameters) and keeps the lowest in force-field energy. The total charge is the sum of formal charges and
   the multiplicity 1 + the number of radical electrons (``atoms.info["charge"]`` / ``["multiplicity"]``).
2. **Optimisation** (:func:`optimise`) with the reference method itself (GFN2-xTB by default) and an ASE optimiser
   (BFGS or FIRE) to ``fmax`` = :data:`FMAX` eV/Å within :data:`MAX_OPTIMISER_STEPS` steps; a frequency calculation
   needs a tight stationary point, else low modes turn imaginary. A stationary point with imaginary modes (a
   saddle, e.g. an eclipsed methyl rotor) is left downhill along them and re-optimised (:data:`SADDLE_RESTARTS`).
3. **Harmonic IR** (:mod:`matsim.reference.vibrations`): finite-difference Hessian and dipole derivatives with the
   same method, translations/rotations projected out, frequencies (cm⁻¹) and intensities (km/mol). Imaginary modes
   are kept and reported (count and lowest wavenumber), never dropped silently.
4. **Broadening** (:func:`broaden`) of the stick spectrum onto :data:`IR_GRID`: Lorentzians of FWHM
   :data:`IR_FWHM`, each with area equal to its intensity (so the spectrum is in km/mol per cm⁻¹ and integrates
   to the total intensity of the bands inside the window); imaginary modes add nothing. The stored spectrum is then
   divided by its maximum (:func:`normalise`), the convention of the QM9S-based spectrum-to-structure models
   (DiffSpectra); the maximum is kept alongside so absolute values can be recovered. :func:`broaden_many` and
   :func:`normalise_many` are the same two steps for many molecules at once (the one implementation; the
   single-molecule functions call them), which is how the reader rebuilds the spectra of a sticks-only
   ``SPECTRA.h5`` (:mod:`matsim.datasets.spectra`).

Methods (``method``): ``"gfn2"`` (default, GFN2-xTB via tblite; 1.3 s per QM9 molecule of 18 atoms on one core,
``benchmarks/spectra/README.md``),
``"gfn1"``, and ``"dft"`` (B3LYP/def2-SVP via PySCF: optimisation with analytic gradients, then the same
finite-difference Hessian over 6N analytic gradients, which also gives the dipole derivatives; water takes 26 s
on 2 cores, an 18-atom QM9 molecule needs ~110 gradients plus its optimisation, estimated hours: small validation
sets only). The calculators come from
:class:`matsim.reference.labeller.ReferenceMethod`.

Raman: not computed. GFN2-xTB in tblite gives no polarisability, so Raman activities would need a second method
(e.g. PySCF polarisability derivatives, which need the separate ``pyscf-properties`` package); IR is what the
spectrum-to-structure models use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.optimize import BFGS, FIRE
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, Descriptors

from matsim.core.errors import ConfigError, MatsimError
from matsim.datasets.spectra import parse_smiles
from matsim.reference.labeller import ReferenceMethod
from matsim.reference.vibrations import FD_STEP, HarmonicModes, finite_difference_derivatives, harmonic_modes

__all__ = [
    "IR_GRID",
    "IR_GRID_START",
    "IR_GRID_STOP",
    "IR_GRID_STEP",
    "IR_FWHM",
    "IR_INACTIVE_PEAK",
    "FMAX",
    "MAX_OPTIMISER_STEPS",
    "N_CONFORMERS",
    "SADDLE_RESTARTS",
    "SADDLE_STEP",
    "OPTIMISERS",
    "SPECTRA_METHODS",
    "SpectrumFailed",
    "SpectrumSettings",
    "IRSpectrum",
    "conformer_from_smiles",
    "optimise",
    "ir_spectrum",
    "ir_from_smiles",
    "LINE_SHAPES",
    "broaden",
    "broaden_many",
    "normalise",
    "normalise_many",
]

#: The spectral window and sampling, cm⁻¹: 500-4000 cm⁻¹ every 1 cm⁻¹ (3501 points), the grid of the QM9S IR
#: spectra used by DiffSpectra. 1 cm⁻¹ resolves a 15 cm⁻¹ band with 15 points; a coarser grid would save storage
#: (14 kB per float32 spectrum) but break comparability with the published models.
IR_GRID_START: float = 500.0
IR_GRID_STOP: float = 4000.0
IR_GRID_STEP: float = 1.0
IR_GRID: np.ndarray = np.linspace(IR_GRID_START, IR_GRID_STOP, int(round((IR_GRID_STOP - IR_GRID_START) / IR_GRID_STEP)) + 1)
IR_GRID.flags.writeable = False

#: Full width at half maximum of the Lorentzian line shape, cm⁻¹: 15 cm⁻¹, the width we understand QM9S used for its
#: broadened IR spectra (Zou et al., Nat. Comput. Sci. 3, 957 (2023)); typical of gas-/solution-phase band widths.
IR_FWHM: float = 15.0

#: Peak heights (km/mol per cm⁻¹) at or below this mean "IR-inactive": 1e-4 is a band of ~0.002 km/mol at FWHM
#: 15 cm⁻¹, 4-5 orders below a typical C-H stretch and far above the finite-difference noise of a symmetric stretch.
IR_INACTIVE_PEAK: float = 1e-4

#: Optimiser convergence, eV/Å: max force 1e-3 eV/Å (≈ 2e-5 Eh/bohr, the "tight" criterion of quantum-chemistry
#: codes for frequency calculations); looser stationary points give spurious imaginary low modes.
FMAX: float = 1e-3
#: Optimiser step limit: a QM9 molecule from an MMFF geometry converges in 10-100 BFGS steps with GFN2.
MAX_OPTIMISER_STEPS: int = 1000
#: Largest atomic displacement, Å, when a saddle point is left along its imaginary modes (both directions of a mode
#: lead downhill at a first-order saddle, so the sign does not matter).
SADDLE_STEP: float = 0.1
#: Re-optimisations from a saddle point before its imaginary modes are accepted and reported. Measured on the first
#: 200 QM9 molecules with GFN2: without restarts 16 of 200 ended on saddle points (mostly eclipsed methyl rotors).
SADDLE_RESTARTS: int = 2
#: Conformers embedded by ETKDG; the lowest in MMFF energy is kept.
N_CONFORMERS: int = 10

OPTIMISERS = {"bfgs": BFGS, "fire": FIRE}

#: Reference methods that can compute spectra.
SPECTRA_METHODS: tuple[str, ...] = ("gfn2", "gfn1", "dft")


class SpectrumFailed(MatsimError, RuntimeError):
    """One molecule has no trustworthy spectrum (cannot be embedded, optimisation did not converge, SCF failure)."""


@dataclass(frozen=True)
class SpectrumSettings:
    """How spectra are computed (picklable: parallel workers rebuild their calculators from it).

    Args:
        method: ``"gfn2"`` (default), ``"gfn1"`` or ``"dft"`` (B3LYP/def2-SVP, slow).
        optimiser: ``"bfgs"`` or ``"fire"``.
        fmax: optimisation convergence, eV/Å.
        max_steps: optimiser step limit.
        fd_step: finite-difference displacement, Å.
        n_conformers: ETKDG conformers to embed (the lowest-MMFF one is used).
        seed: ETKDG random seed.
        fwhm: Lorentzian FWHM, cm⁻¹.
        saddle_restarts: re-optimisations after landing on a saddle point (see :func:`ir_spectrum`).
    """

    method: str = "gfn2"
    optimiser: str = "bfgs"
    fmax: float = FMAX
    max_steps: int = MAX_OPTIMISER_STEPS
    fd_step: float = FD_STEP
    n_conformers: int = N_CONFORMERS
    seed: int = 0
    fwhm: float = IR_FWHM
    saddle_restarts: int = SADDLE_RESTARTS

    def __post_init__(self) -> None:
        if self.method not in SPECTRA_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(SPECTRA_METHODS)}")
        if self.optimiser not in OPTIMISERS:
            raise ConfigError(f"unknown optimiser {self.optimiser!r}; choose one of {', '.join(OPTIMISERS)}")
        for name in ("fmax", "fd_step", "fwhm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps < 1 or self.n_conformers < 1 or self.saddle_restarts < 0:
            raise ConfigError("max_steps and n_conformers must be at least 1, saddle_restarts at least 0")

    @property
    def reference(self) -> ReferenceMethod:
        """The labeller's calculator factory for this method."""
        return ReferenceMethod(self.method)

    @property
    def level_of_theory(self) -> str:
        """E.g. ``"GFN2-xTB"`` or ``"B3LYP/def2-SVP"``."""
        return {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB", "dft": "B3LYP/def2-SVP"}[self.method]


@dataclass(frozen=True)
class IRSpectrum:
    """The IR spectrum of one optimised molecule.

    Attributes:
        atoms: the optimised conformer (Å), with ``info["charge"]`` / ``["multiplicity"]``.
        energy: its energy with the reference method, eV.
        modes: frequencies (cm⁻¹), intensities (km/mol) and normal modes (:class:`HarmonicModes`).
        spectrum: (len(IR_GRID),) broadened absorbance on :data:`IR_GRID`, km/mol per cm⁻¹ (not normalised).
    """

    atoms: Atoms
    energy: float
    modes: HarmonicModes
    spectrum: np.ndarray


def conformer_from_smiles(smiles: str, n_conformers: int = N_CONFORMERS, seed: int = 0) -> Atoms:
    """A force-field-optimised 3D conformer (Å) of ``smiles`` with hydrogens, charge and multiplicity in ``info``.

    Raises :class:`InputFileError` for an unparseable SMILES and :class:`SpectrumFailed` when rdkit cannot embed it.
    """
    mol = Chem.AddHs(parse_smiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    with rdBase.BlockLogs():
        conformer_ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not conformer_ids:  # ETKDG's fallback for hard cases: random starting coordinates
            params.useRandomCoords = True
            conformer_ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not conformer_ids:
            raise SpectrumFailed(f"rdkit cannot embed {smiles!r} in 3D")
        if AllChem.MMFFHasAllMoleculeParams(mol):
            results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
        else:
            results = AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=2000)
    energies = [energy if math.isfinite(energy) else math.inf for _, energy in results]
    best = conformer_ids[int(np.argmin(energies))] if energies else conformer_ids[0]
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer(best).GetPositions())
    atoms.info["charge"] = Chem.GetFormalCharge(mol)
    atoms.info["multiplicity"] = 1 + Descriptors.NumRadicalElectrons(mol)
    return atoms


def optimise(atoms: Atoms, settings: SpectrumSettings) -> tuple[Atoms, float]:
    """The geometry of ``atoms`` optimised with the reference method, and its energy (eV).

    Raises :class:`SpectrumFailed` when the optimiser does not reach ``settings.fmax`` in ``settings.max_steps``.
    """
    optimised = atoms.copy()
    optimised.calc = settings.reference.calculator()
    optimiser = OPTIMISERS[settings.optimiser](optimised, logfile=None)
    if not optimiser.run(fmax=settings.fmax, steps=settings.max_steps):
        fmax = float(np.linalg.norm(optimised.get_forces(), axis=1).max())
        raise SpectrumFailed(
            f"{settings.optimiser.upper()} did not reach fmax {settings.fmax} eV/Å in {settings.max_steps} steps "
            f"(fmax {fmax:.2g} eV/Å)"
        )
    return optimised, float(optimised.get_potential_energy())


def ir_spectrum(atoms: Atoms, settings: SpectrumSettings = SpectrumSettings(), optimised: bool = False) -> IRSpectrum:
    """The harmonic IR spectrum of ``atoms``, broadened on :data:`IR_GRID`.

    Unless ``optimised`` (then the spectrum is that of the geometry as given), the geometry is optimised first, and
    when the optimiser stopped on a saddle point (imaginary modes; typically an eclipsed methyl rotor of the
    force-field conformer) it is pushed downhill along the imaginary modes by :data:`SADDLE_STEP` and optimised
    again, up to ``settings.saddle_restarts`` times. Imaginary modes that remain are reported in the result.

    Raises :class:`SpectrumFailed` for a failed optimisation or SCF (the reason in the message).
    """
    try:
        if optimised:
            atoms = atoms.copy()
            atoms.calc = settings.reference.calculator()
            energy = float(atoms.get_potential_energy())
            modes = _harmonic(atoms, settings)
        else:
            atoms, energy = optimise(atoms, settings)
            modes = _harmonic(atoms, settings)
            for _ in range(settings.saddle_restarts):
                if modes.n_imaginary == 0:
                    break
                try:
                    moved, moved_energy = optimise(_downhill(atoms, modes), settings)
                except SpectrumFailed:  # keep the saddle point and report its imaginary modes
                    break
                atoms, energy, modes = moved, moved_energy, _harmonic(moved, settings)
    except CalculationFailed as exc:  # tblite's generic failure (SCF non-convergence is SCFNotConverged already)
        raise SpectrumFailed(f"{settings.level_of_theory} calculation failed: {exc}") from exc
    atoms.calc = None
    return IRSpectrum(atoms=atoms, energy=energy, modes=modes,
                      spectrum=broaden(modes.frequencies, modes.intensities, fwhm=settings.fwhm))


def _harmonic(atoms: Atoms, settings: SpectrumSettings) -> HarmonicModes:
    hessian, dipole_derivatives = finite_difference_derivatives(atoms, settings.reference.calculator(), settings.fd_step)
    return harmonic_modes(atoms, hessian, dipole_derivatives)


def _downhill(atoms: Atoms, modes: HarmonicModes) -> Atoms:
    """``atoms`` displaced along the sum of its imaginary modes (Cartesian), largest atomic move SADDLE_STEP Å."""
    displacement = modes.modes[modes.frequencies < 0].sum(axis=0) / np.sqrt(atoms.get_masses())[:, None]
    displaced = atoms.copy()
    displaced.positions += SADDLE_STEP * displacement / np.linalg.norm(displacement, axis=1).max()
    return displaced


def ir_from_smiles(smiles: str, settings: SpectrumSettings = SpectrumSettings()) -> IRSpectrum:
    """Conformer, optimisation and IR spectrum of ``smiles`` (the module docstring's pipeline).

    Raises :class:`InputFileError` for an unparseable SMILES; :class:`SpectrumFailed` (or
    :class:`~matsim.reference.SCFNotConverged`) when this molecule has no trustworthy spectrum.
    """
    return ir_spectrum(conformer_from_smiles(smiles, settings.n_conformers, settings.seed), settings)


#: Line shapes :func:`broaden` knows (the ``line_shape`` attribute of a ``SPECTRA.h5`` file).
LINE_SHAPES: tuple[str, ...] = ("lorentzian", "gaussian")
#: Modes per block of :func:`broaden_many`: a (64, 3501) float64 block is 1.8 MB and stays in cache; measured on
#: 3000 molecules of 20-60 modes, blocks of 64 modes broaden 1.3x faster than 512 and 2.7x faster than 2048.
_BROADEN_BLOCK_MODES = 64


def broaden(
    frequencies: np.ndarray,
    intensities: np.ndarray,
    grid: np.ndarray = IR_GRID,
    fwhm: float = IR_FWHM,
    shape: str = "lorentzian",
) -> np.ndarray:
    """Stick spectrum → continuous spectrum on ``grid``: one area-normalised line per mode of positive frequency.

    Args:
        frequencies: (M,) cm⁻¹; modes with a negative (imaginary) wavenumber are left out.
        intensities: (M,) band intensities, e.g. km/mol.
        grid: (G,) wavenumbers, cm⁻¹.
        fwhm: full width at half maximum, cm⁻¹.
        shape: ``"lorentzian"`` or ``"gaussian"``.

    Returns (G,) intensity per cm⁻¹ (km/mol/cm⁻¹ for intensities in km/mol): each band's integral over the real line
    equals its intensity (a Lorentzian band loses the part of its long tails outside the grid: γ/(2πd) ≈ 0.5 % for
    FWHM γ = 15 cm⁻¹ at d = 500 cm⁻¹ from an edge). The one-molecule case of :func:`broaden_many` (same numbers).
    """
    frequencies = np.asarray(frequencies)
    return broaden_many(frequencies, intensities, np.array([0, len(frequencies)]), grid, fwhm, shape)[0]


def broaden_many(
    frequencies: np.ndarray,
    intensities: np.ndarray,
    mode_offsets: np.ndarray,
    grid: np.ndarray = IR_GRID,
    fwhm: float = IR_FWHM,
    shape: str = "lorentzian",
) -> np.ndarray:
    """:func:`broaden` for many molecules at once, vectorised over blocks of modes (the only implementation).

    Args:
        frequencies: (M,) cm⁻¹ of all molecules, flat; negative (imaginary) wavenumbers add nothing.
        intensities: (M,) band intensities, e.g. km/mol.
        mode_offsets: (n+1,) molecule i owns modes ``mode_offsets[i]:mode_offsets[i+1]`` (a ``SPECTRA.h5``'s
            ``mode_offsets``, which may start above 0 for a slice of a file).
        grid: (G,) wavenumbers, cm⁻¹.
        fwhm: full width at half maximum, cm⁻¹.
        shape: ``"lorentzian"`` or ``"gaussian"``.

    Returns (n, G) float64 intensity per cm⁻¹; a molecule without modes has zeros. Each molecule's row depends only
    on its own modes (summed in order), so it is the same whichever molecules it is broadened with.
    Raises :class:`ConfigError` for an unknown ``shape`` or a non-positive ``fwhm``.
    """
    if shape not in LINE_SHAPES:
        raise ConfigError(f"unknown line shape {shape!r}; choose {' or '.join(LINE_SHAPES)}")
    if not fwhm > 0:
        raise ConfigError(f"fwhm must be positive, got {fwhm} cm⁻¹")
    offsets = np.asarray(mode_offsets, dtype=np.int64)
    frequencies = np.asarray(frequencies, dtype=np.float64)
    intensities = np.asarray(intensities, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if offsets.ndim != 1 or len(offsets) < 1 or (np.diff(offsets) < 0).any() or frequencies.shape != intensities.shape:
        raise ConfigError("mode_offsets must be ascending and frequencies and intensities of one length")
    base = int(offsets[0])
    if base < 0 or int(offsets[-1]) - base > len(frequencies):
        raise ConfigError(f"mode_offsets reach mode {int(offsets[-1]) - base}, only {len(frequencies)} given")
    spectra = np.zeros((len(offsets) - 1, len(grid)))
    first = 0
    while first < len(offsets) - 1:
        # molecules first:last, at least one, with at most _BROADEN_BLOCK_MODES modes in all when they fit
        last = max(first + 1, int(np.searchsorted(offsets, offsets[first] + _BROADEN_BLOCK_MODES, "right")) - 1)
        start, stop = int(offsets[first]) - base, int(offsets[last]) - base
        if stop > start:
            lines = _weighted_lines(frequencies[start:stop], intensities[start:stop], grid, fwhm, shape)
            sizes = np.diff(offsets[first : last + 1])
            filled = np.flatnonzero(sizes)
            # rows of a molecule run up to the next molecule with modes: molecules between them have none
            spectra[first + filled] = np.add.reduceat(lines, (offsets[first + filled] - offsets[first]), axis=0)
        first = last
    return spectra


def _weighted_lines(
    frequencies: np.ndarray, intensities: np.ndarray, grid: np.ndarray, fwhm: float, shape: str
) -> np.ndarray:
    """(M, G) line of each mode on ``grid`` times its intensity (zero for imaginary modes), per cm⁻¹."""
    weights = np.where(frequencies > 0, intensities, 0.0)[:, None]
    lines = np.subtract.outer(frequencies, grid)
    if shape == "lorentzian":
        half = fwhm / 2
        np.square(lines, out=lines)
        lines += half**2
        np.divide(weights * (half / math.pi), lines, out=lines)
    else:
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        lines /= sigma
        np.square(lines, out=lines)
        lines *= -0.5
        np.exp(lines, out=lines)
        lines *= weights / (sigma * math.sqrt(2 * math.pi))
    return lines


def normalise(spectrum: np.ndarray) -> tuple[np.ndarray, float]:
    """``spectrum / max(spectrum)`` and the maximum.

    A spectrum whose maximum is at most :data:`IR_INACTIVE_PEAK` (no IR-active band: N2, H2, a lone atom) is
    returned as zeros, so finite-difference noise (~1e-10 km/mol for N2) is never blown up to a unit peak.
    The one-spectrum case of :func:`normalise_many`.
    """
    spectra, peaks = normalise_many(np.asarray(spectrum)[None, :])
    return spectra[0], float(peaks[0])


def normalise_many(spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``spectra`` (n, G) divided by its maximum, and the (n,) maxima (units of ``spectra``); rows whose
    maximum is at most :data:`IR_INACTIVE_PEAK` come back as zeros (see :func:`normalise`)."""
    spectra = np.asarray(spectra)
    peaks = spectra.max(axis=1) if spectra.shape[1] else np.zeros(len(spectra), dtype=spectra.dtype)
    active = peaks > IR_INACTIVE_PEAK
    normalised = np.zeros_like(spectra)
    np.divide(spectra, peaks[:, None], out=normalised, where=active[:, None])
    return normalised, peaks
