"""Metrics of spectrum-to-structure elucidation: pure functions on SMILES strings and spectra arrays.

Definitions follow the molecule-from-spectra literature (DiffSpectra, MassSpecGym, Alberts et al.'s IR-to-structure
transformers):

* **exact match** (:func:`same_molecule`): equal InChIKeys after tautomer canonicalisation (rdkit
  ``MolStandardize.TautomerEnumerator``), so keto/enol or 2-pyridone/2-hydroxypyridine forms of one compound match.
  Stereochemistry is ignored by default (:data:`IGNORE_STEREO`): an IR spectrum cannot tell enantiomers apart.
* **validity** (:func:`is_valid`): rdkit parses and sanitises the SMILES and it is one fragment (one molecule).
* **uniqueness** (:func:`uniqueness`): distinct match keys / valid SMILES.
* **fingerprint similarity**: Tanimoto and cosine on Morgan fingerprints (radius :data:`MORGAN_RADIUS`,
  :data:`MORGAN_BITS` bits, i.e. ECFP4) and Tanimoto on the 166 MACCS keys.
* **MCES** (:func:`mces`): rdkit's RASCAL maximum common edge subgraph, as the MCES distance (bonds of either
  molecule outside the common subgraph) and RASCAL's Johnson similarity.
* **spectral cosine** (:func:`spectral_cosine`) between two spectra on one grid.
* **aggregate** (:func:`evaluate_elucidation`): top-k accuracy and similarity statistics over (truth, ranked
  candidates) pairs.

Never imports :mod:`matsim.models` (house rule); invalid SMILES never raise here, they score as misses / ``nan``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import MACCSkeys, rdFingerprintGenerator, rdRascalMCES
from rdkit.Chem.MolStandardize import rdMolStandardize

__all__ = [
    "IGNORE_STEREO",
    "MORGAN_RADIUS",
    "MORGAN_BITS",
    "MCES_TIMEOUT_S",
    "TOP_K",
    "ElucidationMetrics",
    "mol_from_smiles",
    "is_valid",
    "match_key",
    "same_molecule",
    "uniqueness",
    "morgan_tanimoto",
    "morgan_cosine",
    "maccs_tanimoto",
    "MCESResult",
    "mces",
    "spectral_cosine",
    "top_k_hits",
    "evaluate_elucidation",
]

#: Exact match ignores stereochemistry (chirality and E/Z): harmonic IR spectra of enantiomers are identical and
#: spectrum-to-structure models usually emit stereo-free SMILES (DiffSpectra and MassSpecGym compare 2D structures).
IGNORE_STEREO: bool = True
#: Morgan radius 2 = ECFP4 (Rogers & Hahn 2010), the fingerprint of DiffSpectra's and MassSpecGym's similarity scores.
MORGAN_RADIUS: int = 2
#: Fingerprint length 2048 bits (the same sources).
MORGAN_BITS: int = 2048
#: Seconds RASCAL may spend on one MCES (rdkit's default is 60 s; QM9-sized molecules need milliseconds).
MCES_TIMEOUT_S: int = 10
#: The k of the top-k accuracies reported by :func:`evaluate_elucidation` (DiffSpectra reports 1, 3, 5, 10).
TOP_K: tuple[int, ...] = (1, 3, 5, 10)


def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """The sanitised rdkit molecule of ``smiles``, or ``None`` if rdkit cannot parse it (its log is silenced)."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)


def is_valid(smiles: str) -> bool:
    """True when ``smiles`` parses, sanitises and is a single connected molecule."""
    mol = mol_from_smiles(smiles)
    return mol is not None and mol.GetNumAtoms() > 0 and len(Chem.GetMolFrags(mol)) == 1


@lru_cache(maxsize=65536)
def match_key(smiles: str, ignore_stereo: bool = IGNORE_STEREO) -> str | None:
    """InChIKey of the canonical tautomer of ``smiles`` (stereo removed if ``ignore_stereo``); ``None`` if invalid."""
    mol = mol_from_smiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    with rdBase.BlockLogs():
        mol = rdMolStandardize.TautomerEnumerator().Canonicalize(mol)
        if ignore_stereo:
            Chem.RemoveStereochemistry(mol)
        key = Chem.MolToInchiKey(mol)
    return key or None


def same_molecule(a: str, b: str, ignore_stereo: bool = IGNORE_STEREO) -> bool:
    """True when two SMILES are one compound (same tautomer-canonical InChIKey); False if either is invalid."""
    key = match_key(a, ignore_stereo)
    return key is not None and key == match_key(b, ignore_stereo)


def uniqueness(smiles: Sequence[str]) -> float:
    """Distinct compounds (match keys) among the valid SMILES, divided by the valid count; ``nan`` if none valid."""
    keys = [match_key(s) for s in smiles if is_valid(s)]
    return len(set(keys)) / len(keys) if keys else math.nan


@lru_cache(maxsize=1)
def _morgan_generator() -> rdFingerprintGenerator.FingerprintGenerator64:
    return rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)


def _morgan(smiles: str) -> DataStructs.ExplicitBitVect | None:
    mol = mol_from_smiles(smiles)
    return None if mol is None else _morgan_generator().GetFingerprint(mol)


def morgan_tanimoto(a: str, b: str) -> float:
    """Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits); ``nan`` if either SMILES is invalid."""
    fa, fb = _morgan(a), _morgan(b)
    return math.nan if fa is None or fb is None else DataStructs.TanimotoSimilarity(fa, fb)


def morgan_cosine(a: str, b: str) -> float:
    """Cosine similarity of Morgan fingerprints (radius 2, 2048 bits); ``nan`` if either SMILES is invalid."""
    fa, fb = _morgan(a), _morgan(b)
    return math.nan if fa is None or fb is None else DataStructs.CosineSimilarity(fa, fb)


def maccs_tanimoto(a: str, b: str) -> float:
    """Tanimoto similarity of MACCS keys; ``nan`` if either SMILES is invalid."""
    ma, mb = mol_from_smiles(a), mol_from_smiles(b)
    if ma is None or mb is None:
        return math.nan
    return DataStructs.TanimotoSimilarity(MACCSkeys.GenMACCSKeys(ma), MACCSkeys.GenMACCSKeys(mb))


@dataclass(frozen=True)
class MCESResult:
    """Maximum common edge subgraph of two molecules (heavy atoms; rdkit RASCAL).

    Attributes:
        distance: bonds of either molecule outside the common subgraph, ``n_bonds(a) + n_bonds(b) - 2 n_common``
            (0 for identical graphs).
        similarity: RASCAL's Johnson similarity in [0, 1].
    """

    distance: int
    similarity: float


def mces(a: str, b: str, timeout_s: int = MCES_TIMEOUT_S) -> MCESResult | None:
    """The MCES of two molecules; ``None`` if either SMILES is invalid or RASCAL times out.

    RASCAL normally gives up below a similarity threshold (0.7); it is set to 0 here, so every pair gets an answer.
    RASCAL finds no common subgraph of a single bond (measured with rdkit 2026.09: ``CCO``/``CCN`` give none), so
    for molecules of one or two bonds the distance can be 2 too high; identical molecules are 0 however small.
    """
    ma, mb = mol_from_smiles(a), mol_from_smiles(b)
    if ma is None or mb is None:
        return None
    if Chem.MolToSmiles(ma) == Chem.MolToSmiles(mb):
        return MCESResult(distance=0, similarity=1.0)
    options = rdRascalMCES.RascalOptions()
    options.similarityThreshold = 0.0
    options.timeout = timeout_s
    options.returnEmptyMCES = True
    with rdBase.BlockLogs():
        results = rdRascalMCES.FindMCES(ma, mb, options)
    if not results or results[0].timedOut:
        return None
    common = len(results[0].bondMatches())
    return MCESResult(distance=ma.GetNumBonds() + mb.GetNumBonds() - 2 * common, similarity=float(results[0].similarity))


def spectral_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two spectra on one grid, (G,) each; 0 when either is all zero."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"spectra on different grids: shapes {a.shape} and {b.shape}")
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def top_k_hits(truth: str, candidates: Sequence[str], ks: Sequence[int] = TOP_K) -> dict[int, bool]:
    """For each k: is the true molecule among the first k candidates (as ranked; invalid ones take a slot)?"""
    key = match_key(truth)
    rank = next((i for i, c in enumerate(candidates) if key is not None and match_key(c) == key), None)
    return {k: rank is not None and rank < k for k in ks}


@dataclass(frozen=True)
class ElucidationMetrics:
    """Aggregate elucidation metrics over n spectra (means over spectra unless stated).

    Attributes:
        n: spectra evaluated.
        top_k: k -> fraction of spectra whose true molecule is among the first k candidates.
        validity: fraction of all candidates that are valid molecules.
        uniqueness: mean over spectra of the unique fraction of valid candidates.
        top1_tanimoto: mean Morgan Tanimoto of the first candidate to the truth (invalid or missing: 0).
        max_tanimoto: mean over spectra of the best Morgan Tanimoto among the first max(TOP_K) candidates.
        top1_maccs: mean MACCS Tanimoto of the first candidate (invalid or missing: 0).
        top1_mces_distance: mean MCES distance of the first candidate (over pairs RASCAL answered); ``None`` unless
            asked for (it is the slow one).
    """

    n: int
    top_k: dict[int, float]
    validity: float
    uniqueness: float
    top1_tanimoto: float
    max_tanimoto: float
    top1_maccs: float
    top1_mces_distance: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["top_k"] = {f"top_{k}": v for k, v in self.top_k.items()}
        return data


def evaluate_elucidation(
    results: Sequence[tuple[str, Sequence[str]]], ks: Sequence[int] = TOP_K, with_mces: bool = False
) -> ElucidationMetrics:
    """Metrics over ``(true SMILES, ranked candidate SMILES)`` pairs (see :class:`ElucidationMetrics`)."""
    if not results:
        raise ValueError("no results to evaluate")
    depth = max(ks)
    hits = {k: 0 for k in ks}
    n_candidates = n_valid = 0
    unique, top1, best, maccs, distances = [], [], [], [], []
    for truth, candidates in results:
        for k, hit in top_k_hits(truth, candidates, ks).items():
            hits[k] += hit
        n_candidates += len(candidates)
        n_valid += sum(is_valid(c) for c in candidates)
        fraction = uniqueness(candidates)
        if not math.isnan(fraction):
            unique.append(fraction)
        similarities = [_or_zero(morgan_tanimoto(truth, c)) for c in candidates[:depth]]
        top1.append(similarities[0] if similarities else 0.0)
        best.append(max(similarities, default=0.0))
        maccs.append(_or_zero(maccs_tanimoto(truth, candidates[0])) if candidates else 0.0)
        if with_mces and candidates:
            result = mces(truth, candidates[0])
            if result is not None:
                distances.append(result.distance)
    n = len(results)
    return ElucidationMetrics(
        n=n,
        top_k={k: hits[k] / n for k in ks},
        validity=n_valid / n_candidates if n_candidates else math.nan,
        uniqueness=float(np.mean(unique)) if unique else math.nan,
        top1_tanimoto=float(np.mean(top1)),
        max_tanimoto=float(np.mean(best)),
        top1_maccs=float(np.mean(maccs)),
        top1_mces_distance=(float(np.mean(distances)) if distances else math.nan) if with_mces else None,
    )


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value
