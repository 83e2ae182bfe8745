"""Build periodic electrolyte boxes (rdkit conformers + packmol) and read existing ones into the same form.

Every box this module returns is an ``ase.Atoms`` with

- ``cell`` and ``pbc = (True, True, True)``;
- ``arrays["mol_id"]`` (N,) int: molecule index, 0-based and contiguous per molecule;
- ``arrays["formal_charge"]`` (N,) int: formal charge per atom in e (its sum over a molecule is the ion charge);
- ``info["charge"]``: total charge in e (0 for a neutral box);
- ``info["composition"]``: ``{species name: molecule count}``; ``info["species_formulas"]``: ``{name: Hill formula}``.

Density estimate (when the config gives none): volumes are additive. Each solvent occupies mass/density with its
pure-liquid density (:mod:`matsim.md.species`), each salt its mass over its approximate crystal density. For 1 M
LiPF6 in EC:DMC (1:1 by mass) this gives 1.27 g/cm³, against about 1.3 g/cm³ measured: a few per cent low, which an
NPT run corrects. A freshly packed box at liquid density is at GPa pressure; relaxing it is the MD's job.

packmol (PyPI) packs the box with periodic boundaries (``pbc 0 0 0 L L L``) and the given tolerance; its input file is
passed as a real file on stdin (the wrapper fails on a pipe). Same config and seed give identical positions.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ase.io
import numpy as np
from ase import Atoms
from ase.data import atomic_masses, covalent_radii
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from rdkit import Chem
from rdkit.Chem import AllChem

from matsim.core.config import StrictModel
from matsim.core.errors import ConfigError, InputFileError, MatsimError, StructureError
from matsim.core.units import AVOGADRO
from matsim.core.validation import check_atoms
from matsim.md.species import (
    Salt,
    Species,
    get_salt,
    get_species,
    make_salt,
    molecular_formula,
    species_by_formula,
)

__all__ = [
    "SolventSpec",
    "SaltSpec",
    "SystemConfig",
    "Composition",
    "plan_composition",
    "species_atoms",
    "build_box",
    "read_structure",
    "assign_molecules",
    "prepare_atoms",
]

#: 1 amu/Å³ in g/cm³ inverted: Å³ per (g/mol) at 1 g/cm³, i.e. 1e24 / N_A.
_A3_PER_CM3_PER_MOL = 1e24 / AVOGADRO

#: Ideal bond lengths (Å) of AXn ions placed as regular polyhedra instead of force-field conformers.
_POLYHEDRON_BOND = {("P", "F"): 1.60, ("As", "F"): 1.72, ("B", "F"): 1.40, ("Cl", "O"): 1.44}

#: Elements treated as free ions, never bonded, when molecules are found from distances.
_IONIC_ELEMENTS = {"Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Zn"}


class SolventSpec(StrictModel):
    """One solvent: a library name (``EC``) or SMILES, its share in ``ratio_basis`` units, an optional density."""

    name: str
    ratio: PositiveFloat = 1.0
    density: PositiveFloat | None = Field(default=None, description="pure-liquid density in g/cm3 (overrides library)")


class SaltSpec(StrictModel):
    """One salt: a library name (``LiPF6``) or cation + anion SMILES, at ``concentration`` in ``unit``."""

    name: str | None = None
    cation: str | None = None
    anion: str | None = None
    concentration: float = Field(ge=0.0)
    unit: Literal["mol/L", "mol/kg"] = "mol/L"
    density: PositiveFloat | None = Field(default=None, description="salt crystal density in g/cm3 (density estimate)")

    @model_validator(mode="after")
    def _name_or_ions(self) -> SaltSpec:
        if self.name is None and (self.cation is None or self.anion is None):
            raise ValueError("give a salt name (e.g. LiPF6) or both cation and anion")
        return self


class SystemConfig(StrictModel):
    """An electrolyte box to build.

    Size: exactly one of ``n_molecules`` (count of the first solvent) and ``n_atoms`` (approximate total atoms).
    ``density`` in g/cm³; None estimates it from the composition (module docstring). ``tolerance`` is packmol's
    minimum distance between atoms of different molecules, Å.
    """

    solvents: list[SolventSpec] = Field(min_length=1)
    ratio_basis: Literal["molar", "volume", "mass"] = "molar"
    salts: list[SaltSpec] = Field(default_factory=list)
    n_molecules: PositiveInt | None = None
    n_atoms: PositiveInt | None = None
    density: PositiveFloat | None = None
    seed: int = Field(default=0, ge=0)
    tolerance: PositiveFloat = 2.0

    @model_validator(mode="after")
    def _one_size(self) -> SystemConfig:
        if (self.n_molecules is None) == (self.n_atoms is None):
            raise ValueError("give exactly one of n_molecules (of the first solvent) and n_atoms")
        return self


@dataclass(frozen=True)
class Composition:
    """What goes into the box.

    Attributes:
        species: species in packing order (solvents, then each salt's cation and anion).
        counts: molecule count per species, same order.
        density: box density in g/cm³ (target, from config or estimate).
        volume: box volume in Å³.
        concentrations: per salt name, the realised ``(mol/L, mol/kg)`` after rounding to whole formula units.
    """

    species: tuple[Species, ...]
    counts: tuple[int, ...]
    density: float
    volume: float
    concentrations: dict[str, tuple[float, float]]

    @property
    def length(self) -> float:
        """Edge of the cubic box, Å."""
        return self.volume ** (1.0 / 3.0)


def _rdkit_mol(species: Species) -> Chem.Mol:
    mol = Chem.MolFromSmiles(species.smiles)
    if mol is None:
        raise ConfigError(f"species {species.name!r}: SMILES {species.smiles!r} does not parse")
    return Chem.AddHs(mol)


def _molar_mass(species: Species) -> float:
    """Molar mass in g/mol from ASE's atomic masses (the masses the box will carry)."""
    return float(sum(atomic_masses[a.GetAtomicNum()] for a in _rdkit_mol(species).GetAtoms()))


def _n_atoms(species: Species) -> int:
    return _rdkit_mol(species).GetNumAtoms()


def _resolve_salt(spec: SaltSpec) -> Salt:
    if spec.name is not None and spec.cation is None:
        salt = get_salt(spec.name)
        return salt if spec.density is None else make_salt(salt.name, salt.cation, salt.anion, spec.density)
    cation, anion = get_species(spec.cation), get_species(spec.anion)
    return make_salt(spec.name or f"{cation.name}.{anion.name}", cation, anion, spec.density)


def _salt_mass(salt: Salt) -> float:
    return salt.n_cation * _molar_mass(salt.cation) + salt.n_anion * _molar_mass(salt.anion)


def _solvent_mole_ratios(config: SystemConfig, solvents: list[Species]) -> np.ndarray:
    """Molecules of each solvent per molecule of the first one."""
    ratios = np.array([s.ratio for s in config.solvents], dtype=float)
    masses = np.array([_molar_mass(s) for s in solvents])
    if config.ratio_basis == "mass":
        ratios = ratios / masses
    elif config.ratio_basis == "volume":
        ratios = ratios * np.array([_require_density(s, "a volume ratio") for s in solvents]) / masses
    return ratios / ratios[0]


def _require_density(species: Species, purpose: str) -> float:
    if species.density is None:
        raise ConfigError(f"solvent {species.name!r} has no known density, needed for {purpose}: set its 'density'")
    return species.density


def _salt_moles(config: SystemConfig, salts: list[Salt], solvent_mass: float, solvent_volume: float | None) -> tuple[
    np.ndarray, float
]:
    """Formula units of each salt and the solution volume (cm³) per mole of first-solvent molecules.

    Solves V = (fixed volume) + Σ_molar c_k V M_k / ρ_k (estimate) or ρ V = m_solvent + Σ n_k M_k (given density).
    """
    masses = np.array([_salt_mass(s) for s in salts])
    molal = np.array([spec.unit == "mol/kg" for spec in config.salts])
    conc = np.array([spec.concentration for spec in config.salts])
    moles = np.where(molal, conc * solvent_mass / 1000.0, 0.0)
    if config.density is not None:
        numerator = solvent_mass + float(np.sum(moles * masses))
        denominator = config.density - float(np.sum(np.where(molal, 0.0, conc * masses / 1000.0)))
    else:
        salt_rho = np.array([_salt_density(s) for s in salts])
        numerator = solvent_volume + float(np.sum(moles * masses / salt_rho))
        denominator = 1.0 - float(np.sum(np.where(molal, 0.0, conc * masses / (1000.0 * salt_rho))))
    if denominator <= 0:
        raise ConfigError("salt concentrations (mol/L) are too high: the salts alone would exceed the box volume")
    volume = numerator / denominator
    return np.where(molal, moles, conc * volume / 1000.0), volume


def _salt_density(salt: Salt) -> float:
    if salt.density is None:
        raise ConfigError(f"salt {salt.name!r} has no known density for the density estimate: set its 'density' "
                          "or the system 'density'")
    return salt.density


def plan_composition(config: SystemConfig) -> Composition:
    """Molecule counts and box volume for ``config`` (no geometry is built).

    Salt formula units are rounded to whole numbers, so ions always balance to a neutral box; the realised
    concentrations are reported in :attr:`Composition.concentrations`.

    Raises:
        ConfigError: missing densities, impossible concentrations, or a box too small to hold every component.
    """
    solvents = [get_species(s.name, s.density) for s in config.solvents]
    for species in solvents:
        if species.charge != 0:
            raise ConfigError(f"solvent {species.name!r} has net charge {species.charge:+d}; put ions in 'salts'")
    salts = [_resolve_salt(spec) for spec in config.salts]
    x = _solvent_mole_ratios(config, solvents)
    solvent_mass = float(np.sum(x * [_molar_mass(s) for s in solvents]))
    solvent_volume = None
    if config.density is None:
        solvent_volume = float(np.sum(x * [_molar_mass(s) / _require_density(s, "the density estimate")
                                           for s in solvents]))
    salt_moles, _ = _salt_moles(config, salts, solvent_mass, solvent_volume)
    scale = _scale(config, solvents, salts, x, salt_moles)
    solvent_counts = [config.n_molecules if i == 0 and config.n_molecules else round(scale * xi)
                      for i, xi in enumerate(x)]
    units = [round(scale * n) for n in salt_moles]
    _check_nonzero(config, solvents, salts, solvent_counts, units)
    species: list[Species] = list(solvents)
    counts: list[int] = list(solvent_counts)
    for salt, n in zip(salts, units):
        species += [salt.cation, salt.anion]
        counts += [n * salt.n_cation, n * salt.n_anion]
    mass = sum(c * _molar_mass(s) for s, c in zip(species, counts))
    solvent_mass_box = sum(c * _molar_mass(s) for s, c in zip(solvents, solvent_counts))
    density = config.density or _estimated_density(solvents, solvent_counts, salts, units)
    volume = mass / density * _A3_PER_CM3_PER_MOL
    concentrations = {
        salt.name: (n / AVOGADRO / (volume * 1e-27), n / (solvent_mass_box / 1000.0))
        for salt, n in zip(salts, units)
    }
    return Composition(tuple(species), tuple(counts), density, volume, concentrations)


def _scale(config: SystemConfig, solvents: list[Species], salts: list[Salt], x: np.ndarray,
           salt_moles: np.ndarray) -> float:
    """Number of first-solvent molecules that realises the requested size."""
    if config.n_molecules is not None:
        return float(config.n_molecules)
    atoms_per_unit = float(np.sum(x * [_n_atoms(s) for s in solvents]))
    atoms_per_unit += sum(n * (s.n_cation * _n_atoms(s.cation) + s.n_anion * _n_atoms(s.anion))
                          for s, n in zip(salts, salt_moles))
    return config.n_atoms / atoms_per_unit


def _check_nonzero(config: SystemConfig, solvents: list[Species], salts: list[Salt], solvent_counts: list[int],
                   units: list[int]) -> None:
    for species, count in zip(solvents, solvent_counts):
        if count == 0:
            raise ConfigError(f"the box is too small to hold one {species.name} molecule: increase its size")
    for salt, spec, n in zip(salts, config.salts, units):
        if n == 0 and spec.concentration > 0:
            raise ConfigError(f"the box is too small to hold one {salt.name} formula unit at "
                              f"{spec.concentration} {spec.unit}: increase its size")


def _estimated_density(solvents: list[Species], solvent_counts: list[int], salts: list[Salt],
                       units: list[int]) -> float:
    """Volume-additive density in g/cm³ of the rounded composition (module docstring)."""
    mass = sum(c * _molar_mass(s) for s, c in zip(solvents, solvent_counts))
    volume = sum(c * _molar_mass(s) / _require_density(s, "the density estimate")
                 for s, c in zip(solvents, solvent_counts))
    for salt, n in zip(salts, units):
        mass += n * _salt_mass(salt)
        volume += n * _salt_mass(salt) / _salt_density(salt)
    return mass / volume


def species_atoms(species: Species, seed: int = 0) -> Atoms:
    """One 3D conformer of ``species`` as ``ase.Atoms`` with ``arrays["formal_charge"]`` (int, e).

    AXn ions listed in ``_POLYHEDRON_BOND`` (PF6-, AsF6-, BF4-, ClO4-) are placed as ideal octahedra / tetrahedra
    (rdkit's ETKDG distorts PF6-); everything else is embedded with ETKDG and relaxed with MMFF94, or UFF where MMFF
    lacks parameters (boron). The result is checked for sane bond lengths.

    Raises:
        StructureError: embedding failed or the geometry has bonds far from covalent lengths.
    """
    mol = _rdkit_mol(species)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=int)
    positions = _polyhedron(mol)
    if positions is None:
        positions = _embed(mol, species.name, seed)
    atoms = Atoms(symbols, positions=positions - positions.mean(axis=0))
    atoms.arrays["formal_charge"] = charges
    _check_bonds(atoms, mol, species.name)
    return atoms


def _polyhedron(mol: Chem.Mol) -> np.ndarray | None:
    """Ideal octahedron / tetrahedron positions (Å) for an AX6 / AX4 ion in rdkit atom order, else None."""
    centre = [a for a in mol.GetAtoms() if a.GetDegree() == mol.GetNumAtoms() - 1]
    if mol.GetNumAtoms() not in (5, 7) or not centre:
        return None
    ligands = {a.GetSymbol() for a in mol.GetAtoms() if a.GetIdx() != centre[0].GetIdx()}
    bond = _POLYHEDRON_BOND.get((centre[0].GetSymbol(), next(iter(ligands))))
    if len(ligands) != 1 or bond is None:
        return None
    if mol.GetNumAtoms() == 7:
        directions = np.vstack([np.eye(3), -np.eye(3)])
    else:
        directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3.0)
    positions = np.zeros((mol.GetNumAtoms(), 3))
    ligand_index = [a.GetIdx() for a in mol.GetAtoms() if a.GetIdx() != centre[0].GetIdx()]
    positions[ligand_index] = bond * directions
    return positions


def _embed(mol: Chem.Mol, name: str, seed: int) -> np.ndarray:
    """ETKDG embedding + MMFF94 (else UFF) relaxation; positions (n, 3) in Å."""
    if mol.GetNumAtoms() == 1:
        return np.zeros((1, 3))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise StructureError(f"rdkit could not embed a 3D conformer of {name}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    return np.array(mol.GetConformer().GetPositions())


def _check_bonds(atoms: Atoms, mol: Chem.Mol, name: str) -> None:
    """Every bond within 25 % of the sum of covalent radii; no non-bonded pair closer than 1.0 Å."""
    numbers = atoms.numbers
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        length = atoms.get_distance(i, j)
        reference = covalent_radii[numbers[i]] + covalent_radii[numbers[j]]
        if abs(length - reference) > 0.25 * reference:
            raise StructureError(f"{name}: bond {atoms[i].symbol}{i}-{atoms[j].symbol}{j} is {length:.2f} Å, "
                                 f"far from the covalent {reference:.2f} Å")
    if len(atoms) > 1:
        bonded = Chem.GetDistanceMatrix(mol) <= 1
        distances = atoms.get_all_distances()
        close = np.argwhere(~bonded & (distances < 1.0))
        if len(close):
            i, j = close[0]
            raise StructureError(f"{name}: non-bonded atoms {i} and {j} are {distances[i, j]:.2f} Å apart")


def _packmol_executable() -> str:
    """packmol on PATH, beside the Python executable, or the binary inside the PyPI ``packmol`` package (found even
    when the package was installed with ``pip --target`` and its launcher script is not on PATH)."""
    found = shutil.which("packmol") or shutil.which("packmol", path=str(Path(sys.executable).parent))
    if found is None:
        try:
            import packmol
        except ImportError:
            packmol = None
        if packmol is not None:
            found = shutil.which("packmol", path=str(Path(packmol.__file__).parent / "binaries"))
    if found is None:
        raise MatsimError("packmol is not installed: pip install packmol")
    return found


def _pack(templates: list[Atoms], counts: list[int], length: float, tolerance: float, seed: int) -> np.ndarray:
    """Positions (N, 3) in Å of ``counts[k]`` copies of each template packed periodically in a cube of edge ``length``.

    Molecules come out in template order, each copy's atoms contiguous.
    """
    with tempfile.TemporaryDirectory(prefix="matsim-packmol-") as tmp:
        work = Path(tmp)
        blocks = []
        for k, (template, count) in enumerate(zip(templates, counts)):
            if count == 0:
                continue
            ase.io.write(work / f"species{k}.xyz", template, format="xyz")
            blocks.append(f"structure species{k}.xyz\n  number {count}\nend structure\n")
        text = (f"tolerance {tolerance}\nfiletype xyz\noutput packed.xyz\nseed {seed + 1}\n"
                f"pbc 0. 0. 0. {length:.6f} {length:.6f} {length:.6f}\n" + "".join(blocks))
        (work / "packmol.inp").write_text(text)
        with open(work / "packmol.inp") as stdin:
            result = subprocess.run([_packmol_executable()], stdin=stdin, cwd=work, capture_output=True, text=True)
        output = work / "packed.xyz"
        if result.returncode != 0 or not output.is_file():
            tail = " ".join(result.stdout.strip().splitlines()[-5:])
            raise MatsimError(f"packmol failed (exit {result.returncode}): {tail}")
        return ase.io.read(output, format="xyz").positions


def build_box(config: SystemConfig) -> Atoms:
    """Build the periodic box described by ``config`` (module docstring lists what the Atoms carries).

    Raises:
        ConfigError: bad composition; StructureError: a species cannot be embedded or the packed box has
        overlapping atoms; MatsimError: packmol missing or failing.
    """
    composition = plan_composition(config)
    templates = [species_atoms(s, config.seed) for s in composition.species]
    length = composition.length
    positions = _pack(templates, list(composition.counts), length, config.tolerance, config.seed)
    atoms = _assemble(templates, list(composition.counts), positions, length)
    atoms.info["composition"] = {s.name: c for s, c in zip(composition.species, composition.counts)}
    atoms.info["species_formulas"] = {s.name: molecular_formula(t.get_chemical_symbols())
                                      for s, t in zip(composition.species, templates)}
    atoms.info["concentration_mol_per_L"] = {k: v[0] for k, v in composition.concentrations.items()}
    atoms.info["concentration_mol_per_kg"] = {k: v[1] for k, v in composition.concentrations.items()}
    atoms.info["seed"] = config.seed
    check_atoms(atoms, min_distance=min(0.5 * config.tolerance, 1.0))
    return atoms


def _assemble(templates: list[Atoms], counts: list[int], positions: np.ndarray, length: float) -> Atoms:
    """Concatenate the packed copies into one wrapped periodic Atoms with mol_id and formal_charge."""
    symbols, mol_id, charges = [], [], []
    molecule = 0
    for template, count in zip(templates, counts):
        for _ in range(count):
            symbols += template.get_chemical_symbols()
            mol_id += [molecule] * len(template)
            charges += template.arrays["formal_charge"].tolist()
            molecule += 1
    atoms = Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)
    atoms.wrap()
    atoms.arrays["mol_id"] = np.array(mol_id, dtype=int)
    atoms.arrays["formal_charge"] = np.array(charges, dtype=int)
    atoms.info["charge"] = int(sum(charges))
    return atoms


def assign_molecules(atoms: Atoms, scale: float = 1.2) -> np.ndarray:
    """Molecule index per atom (N,) from covalent bonding: atoms closer than ``scale`` × the sum of covalent radii
    (periodic images included) share a molecule; alkali / alkaline-earth / Zn atoms are always single ions."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from vesin import NeighborList

    radii = covalent_radii[atoms.numbers]
    ionic = np.isin(atoms.get_chemical_symbols(), list(_IONIC_ELEMENTS))
    cutoff = 2.0 * scale * float(radii.max())
    box = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(atoms.positions, box, bool(atoms.pbc.any()), "ijd")
    keep = (d < scale * (radii[i] + radii[j])) & ~ionic[i] & ~ionic[j]
    n = len(atoms)
    graph = coo_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return _first_appearance_order(labels)


def _first_appearance_order(labels: np.ndarray) -> np.ndarray:
    """Relabel integers 0, 1, ... in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(int)


def read_structure(path: str | Path, format: str | None = None, index: int = -1) -> Atoms:
    """Read a periodic box (extxyz, CIF, LAMMPS data ``atom_style full``, anything ASE reads) into the builder form.

    Molecules come from the file's molecule ids (LAMMPS ``mol-id``, extxyz ``mol_id``) or else from covalent
    bonding. Formal charges come from the file's ``formal_charge`` if present, else each molecule's net charge is the
    rounded sum of the file's partial charges, or that of the library species with the same formula; it sits on the
    atom that carries it in the library species, else on the atom with the largest partial charge of that sign.
    LAMMPS elements are identified from the masses (each must match an element within 0.1 amu).

    Raises:
        InputFileError: missing or unreadable file; StructureError: unknown masses or overlapping atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"structure file not found: {path}")
    fmt = format or ("lammps-data" if path.suffix in (".data", ".lmp") or path.name.startswith("data.") else None)
    try:
        if fmt == "lammps-data":
            atoms = ase.io.read(path, format=fmt, atom_style="full", units="real")
            _check_lammps_masses(atoms, path)
        else:
            atoms = ase.io.read(path, format=fmt, index=index)
    except MatsimError:
        raise
    except Exception as exc:
        raise InputFileError(f"cannot read {path}: {exc}") from exc
    return prepare_atoms(atoms, str(path))


def _check_lammps_masses(atoms: Atoms, path: Path) -> None:
    masses = atoms.get_masses()
    mismatch = np.abs(masses - atomic_masses[atoms.numbers]) > 0.1
    if mismatch.any():
        k = int(np.argmax(mismatch))
        raise StructureError(f"{path}: atom {k} has mass {masses[k]:.3f} amu, which matches no element")


def prepare_atoms(atoms: Atoms, source: str = "structure") -> Atoms:
    """A copy of a periodic ``atoms`` in the builder form (module docstring): symbols, positions, cell and pbc, plus
    ``mol_id``, ``formal_charge``, ``info["charge"]`` and the composition (see :func:`read_structure` for how they
    are found). ``source`` names the input in error messages.

    Raises:
        StructureError: no full periodic cell, or overlapping atoms.
    """
    source_mol = atoms.arrays.get("mol-id", atoms.arrays.get("mol_id"))
    partial = atoms.arrays.get("initial_charges")
    formal = atoms.arrays.get("formal_charge")
    out = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if not out.pbc.all() or out.cell.rank < 3:
        raise StructureError(f"{source}: expected a periodic box with a full 3D cell")
    mol_id = _first_appearance_order(np.asarray(source_mol)) if source_mol is not None else assign_molecules(out)
    out.arrays["mol_id"] = mol_id
    if formal is None:
        formal = _formal_charges(out, mol_id, partial)
    out.arrays["formal_charge"] = np.asarray(formal, dtype=int)
    out.info["charge"] = int(out.arrays["formal_charge"].sum())
    out.info.update(_composition_info(out))
    check_atoms(out)
    return out


def _formal_charges(atoms: Atoms, mol_id: np.ndarray, partial: np.ndarray | None) -> np.ndarray:
    library = species_by_formula()
    symbols = np.array(atoms.get_chemical_symbols())
    charges = np.zeros(len(atoms), dtype=int)
    has_partial = partial is not None and np.any(partial != 0)
    for molecule in range(int(mol_id.max()) + 1):
        members = np.flatnonzero(mol_id == molecule)
        species = library.get(molecular_formula(symbols[members].tolist()))
        if has_partial:
            net = int(round(float(partial[members].sum())))
        else:
            net = species.charge if species is not None else 0
        if net != 0:
            charges[_charge_site(members, symbols, species, partial, net)] = net
    return charges


def _charge_site(members: np.ndarray, symbols: np.ndarray, species: Species | None, partial: np.ndarray | None,
                 net: int) -> int:
    """The atom of a molecule that carries its net formal charge."""
    if species is not None and species.charge == net:
        mol = _rdkit_mol(species)
        element = next(a.GetSymbol() for a in mol.GetAtoms() if a.GetFormalCharge() != 0)
        return int(members[np.flatnonzero(symbols[members] == element)[0]])
    if partial is None:
        return int(members[0])
    return int(members[np.argmax(np.sign(net) * partial[members])])


def _composition_info(atoms: Atoms) -> dict:
    """``composition`` and ``species_formulas`` by formula, named after library species where one matches."""
    library = species_by_formula()
    symbols = np.array(atoms.get_chemical_symbols())
    mol_id = atoms.arrays["mol_id"]
    composition: dict[str, int] = {}
    formulas: dict[str, str] = {}
    for molecule in range(int(mol_id.max()) + 1):
        formula = molecular_formula(symbols[mol_id == molecule].tolist())
        name = library[formula].name if formula in library else formula
        composition[name] = composition.get(name, 0) + 1
        formulas[name] = formula
    return {"composition": composition, "species_formulas": formulas}
