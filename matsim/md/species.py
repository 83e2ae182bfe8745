"""Species library for electrolyte boxes: solvents, ions and salts by common name, or any SMILES.

Solvent densities are pure-liquid densities in g/cm³ near 25 °C. Sources: K. Xu, Chem. Rev. 104, 4303 (2004),
Table 1 (EC, PC, DMC, DEC, EMC, DME, DOL, THF; EC is a solid at 25 °C and its value is the liquid at 40 °C), the
constant the CALiSol-23 authors use for FEC (de Blasio et al., Sci. Data 11, 750 (2024)), and handbook / vendor values
for the rest. Each entry names its source; values marked "unverified" were not checked against a primary source.
The densities only set the starting density of a packed box (an NPT run relaxes it), so a few per cent do not matter.

Salt densities are approximate crystal densities in g/cm³, used only for the salt's volume in the density estimate
of :mod:`matsim.md.builder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rdkit import Chem, RDLogger

from matsim.core.errors import ConfigError

__all__ = [
    "Species",
    "Salt",
    "SOLVENTS",
    "IONS",
    "SALTS",
    "get_species",
    "get_salt",
    "make_salt",
    "known_species_names",
    "molecular_formula",
    "species_formula",
    "species_by_formula",
]


@dataclass(frozen=True)
class Species:
    """One molecule or ion.

    Attributes:
        name: label used in compositions and analysis (``"EC"``, ``"PF6"``, or the SMILES of a custom species).
        smiles: SMILES with explicit formal charges (``F[P-](F)(F)(F)(F)F``).
        charge: net formal charge in e (sum of the atoms' formal charges).
        density: pure-liquid density in g/cm³, or None where unknown (ions, custom SMILES).
        source: where ``density`` comes from.
    """

    name: str
    smiles: str
    charge: int
    density: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Salt:
    """A neutral salt: ``n_cation`` cations and ``n_anion`` anions per formula unit (``n_cation·z+ + n_anion·z- = 0``).

    Attributes:
        density: approximate crystal density in g/cm³ (for the salt's volume in density estimates), or None.
    """

    name: str
    cation: Species
    anion: Species
    n_cation: int
    n_anion: int
    density: float | None = None


_XU = "K. Xu, Chem. Rev. 104, 4303 (2004), Table 1"

# name: (SMILES, density g/cm3, source)
_SOLVENT_TABLE: dict[str, tuple[str, float | None, str]] = {
    "EC": ("O=C1OCCO1", 1.321, _XU + " (liquid, 40 C)"),
    "PC": ("CC1COC(=O)O1", 1.200, _XU),
    "DMC": ("COC(=O)OC", 1.063, _XU),
    "EMC": ("CCOC(=O)OC", 1.006, _XU),
    "DEC": ("CCOC(=O)OCC", 0.969, _XU),
    "FEC": ("O=C1OCC(F)O1", 1.454, "CALiSol-23 conversion constant (de Blasio et al. 2024)"),
    "VC": ("O=C1OC=CO1", 1.355, "vendor value, unverified"),
    "DME": ("COCCOC", 0.86, _XU),
    "DOL": ("C1COCO1", 1.06, _XU),
    "THF": ("C1CCOC1", 0.88, _XU),
    "GBL": ("O=C1CCCO1", 1.13, "handbook value, unverified"),
    "AN": ("CC#N", 0.777, "handbook value, unverified"),
    "TTE": ("FC(F)C(F)(F)OCC(F)(F)C(F)F", 1.53, "vendor value, unverified"),
}

_ION_TABLE: dict[str, str] = {
    "Li": "[Li+]",
    "Na": "[Na+]",
    "K": "[K+]",
    "Mg": "[Mg+2]",
    "PF6": "F[P-](F)(F)(F)(F)F",
    "AsF6": "F[As-](F)(F)(F)(F)F",
    "BF4": "F[B-](F)(F)F",
    "ClO4": "[O-]Cl(=O)(=O)=O",
    "FSI": "O=S(=O)(F)[N-]S(=O)(=O)F",
    "TFSI": "O=S(=O)(C(F)(F)F)[N-]S(=O)(=O)C(F)(F)F",
    "BOB": "O=C1O[B-]2(OC1=O)OC(=O)C(=O)O2",
    "DFOB": "O=C1O[B-](F)(F)OC1=O",
}

# name: (cation, anion, approximate crystal density g/cm3 or None); stoichiometry follows from the charges.
_SALT_TABLE: dict[str, tuple[str, str, float | None]] = {
    "LiPF6": ("Li", "PF6", 2.84),
    "LiAsF6": ("Li", "AsF6", 3.26),
    "LiBF4": ("Li", "BF4", 0.85),
    "LiClO4": ("Li", "ClO4", 2.42),
    "LiFSI": ("Li", "FSI", 1.6),
    "LiTFSI": ("Li", "TFSI", 1.33),
    "LiBOB": ("Li", "BOB", 1.9),
    "LiDFOB": ("Li", "DFOB", 1.9),
    "NaPF6": ("Na", "PF6", 2.37),
    "NaFSI": ("Na", "FSI", 1.9),
    "NaTFSI": ("Na", "TFSI", 1.9),
    "NaClO4": ("Na", "ClO4", 2.50),
    "KPF6": ("K", "PF6", 2.75),
    "Mg(TFSI)2": ("Mg", "TFSI", 2.1),
}


def _parse_smiles(smiles: str) -> Chem.Mol | None:
    """RDKit molecule for ``smiles``, or None if it does not parse (RDKit's own error log silenced)."""
    RDLogger.DisableLog("rdApp.*")
    try:
        return Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")


def _species_from_smiles(name: str, smiles: str, density: float | None = None, source: str = "") -> Species:
    mol = _parse_smiles(smiles)
    if mol is None:
        raise ConfigError(f"species {name!r}: SMILES {smiles!r} does not parse")
    charge = sum(atom.GetFormalCharge() for atom in mol.GetAtoms())
    return Species(name=name, smiles=smiles, charge=charge, density=density, source=source)


SOLVENTS: dict[str, Species] = {
    name: _species_from_smiles(name, smi, rho, src) for name, (smi, rho, src) in _SOLVENT_TABLE.items()
}
IONS: dict[str, Species] = {name: _species_from_smiles(name, smi) for name, smi in _ION_TABLE.items()}


def known_species_names() -> list[str]:
    """Names :func:`get_species` knows (solvents, then ions)."""
    return [*SOLVENTS, *IONS]


def get_species(name_or_smiles: str, density: float | None = None) -> Species:
    """Resolve a library name (``"EC"``, case-insensitive) or any SMILES into a :class:`Species`.

    Args:
        name_or_smiles: a name from :func:`known_species_names` or a SMILES string.
        density: pure-liquid density in g/cm³; overrides the library value.

    Raises:
        ConfigError: neither a known name nor a valid SMILES (the message lists the known names).
    """
    library = {**SOLVENTS, **IONS}
    by_lower = {key.lower(): key for key in library}
    key = by_lower.get(name_or_smiles.strip().lower())
    if key is not None:
        found = library[key]
        if density is None:
            return found
        return Species(found.name, found.smiles, found.charge, density, "user")
    if _parse_smiles(name_or_smiles) is None:
        raise ConfigError(
            f"unknown species {name_or_smiles!r}: not a known name and not a valid SMILES "
            f"(known: {', '.join(known_species_names())})"
        )
    return _species_from_smiles(name_or_smiles, name_or_smiles, density, "user" if density is not None else "")


def make_salt(name: str, cation: Species, anion: Species, density: float | None = None) -> Salt:
    """The smallest neutral formula unit of ``cation`` and ``anion``.

    Raises:
        ConfigError: the cation is not positive or the anion is not negative.
    """
    if cation.charge <= 0 or anion.charge >= 0:
        raise ConfigError(
            f"salt {name!r}: cation {cation.name} has charge {cation.charge:+d} and anion {anion.name} has charge "
            f"{anion.charge:+d}; need a positive cation and a negative anion"
        )
    lcm = math.lcm(cation.charge, -anion.charge)
    return Salt(name, cation, anion, lcm // cation.charge, lcm // -anion.charge, density)


def get_salt(name: str) -> Salt:
    """A library salt by name (case-insensitive), e.g. ``"LiPF6"``.

    Raises:
        ConfigError: unknown name (the message lists the known salts).
    """
    by_lower = {key.lower(): key for key in _SALT_TABLE}
    key = by_lower.get(name.strip().lower())
    if key is None:
        raise ConfigError(
            f"unknown salt {name!r} (known: {', '.join(_SALT_TABLE)}; or give cation and anion SMILES instead)"
        )
    cation, anion, density = _SALT_TABLE[key]
    return make_salt(key, IONS[cation], IONS[anion], density)


SALTS: dict[str, Salt] = {name: get_salt(name) for name in _SALT_TABLE}


def molecular_formula(symbols: list[str]) -> str:
    """Hill formula (C, H, then alphabetical; counts of 1 omitted) of a list of element symbols."""
    counts: dict[str, int] = {}
    for symbol in symbols:
        counts[symbol] = counts.get(symbol, 0) + 1
    order = [s for s in ("C", "H") if s in counts] if "C" in counts else []
    order += sorted(s for s in counts if s not in order)
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)


def species_formula(species: Species) -> str:
    """Hill formula of ``species`` with its hydrogens (``EC`` -> ``C3H4O3``)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(species.smiles))
    return molecular_formula([atom.GetSymbol() for atom in mol.GetAtoms()])


def species_by_formula() -> dict[str, Species]:
    """Library solvents and ions keyed by Hill formula (no two library species share one)."""
    return {species_formula(s): s for s in [*SOLVENTS.values(), *IONS.values()]}
