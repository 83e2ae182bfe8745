"""Metrics of generated crystals: validity, coverage, property EMDs, match rate, uniqueness and novelty.

The definitions follow CDVAE (Xie et al., ICLR 2022; ``scripts/eval_utils.py`` and ``scripts/compute_metrics.py``
of txie-93/cdvae) so that numbers are comparable with CDVAE, DiffCSP and MatterGen tables; the result is a typed,
JSON-serialisable dataclass in the style of MatterGen's metrics library. Every function is pure: it takes pymatgen
``Structure`` objects (or ``None`` for a sample that failed to decode) and returns numbers.

Denominators always count every sample, failed ones included: a ``None`` sample is invalid, not unique and not novel.

Libraries and why:

* SMACT (charge neutrality + Pauling test): the reference implementation CDVAE calls. SMACT 4 changed the default
  oxidation-state set (to a filtered ICSD-2024 set), so the set is pinned here to ``"smact14"``, the only set SMACT
  2.x had and hence the one CDVAE's published numbers used.
* matminer ``CrystalNNFingerprint.from_preset("ops")`` and ``ElementProperty.from_preset("magpie")``: the exact
  fingerprints CDVAE uses for coverage. matminer 0.10 works with this pymatgen; its metadata pins ``pandas<3``
  although these two featurizers run on pandas 3.
* pymatgen ``StructureMatcher`` for match rate, RMSE, uniqueness and novelty.

Composition fingerprints are standardised, as in CDVAE, with one fixed set of per-feature means and stds for every
dataset: CDVAE's ``CompScalerMeans/Stds`` are the statistics of MP-20 training crystals. matsim ships the same
statistics fitted on the MP-20 training and validation rows we have (``../shared/data/mp_20_subset``, 970 crystals;
``data/magpie_scaler_mp20.json``, made by ``benchmarks/crystals/fit_composition_scaler.py``); they agree with CDVAE's
to a few per cent, so the composition cutoffs mean what they mean in CDVAE's tables. Fitting the scaler on the
reference set instead (as matsim did before) shrinks the stds for a narrow family such as perov_5 (some features to
1 % of MP-20's) and with them coverage (perov_5 UniMat COV-R 0.92 -> 0.71).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import multiprocessing
import sys
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from matsim.core.errors import ConfigError, InputFileError
from matsim.metrics.charge_balance import smact_charge_balanced

# --- thresholds (each with its source) -------------------------------------------------------------------------

# CDVAE eval_utils.structure_validity(cutoff=0.5): no two atoms (periodic images included) closer than this, in Å.
MIN_INTERATOMIC_DISTANCE = 0.5
# CDVAE compute_metrics.Crystal.get_structure: a cell smaller than this (Å³) is 'unrealistically_small_lattice'.
MIN_CELL_VOLUME = 0.1
# SMACT oxidation-state set. "smact14" is the set SMACT 2.x used by default, i.e. the one behind CDVAE's numbers;
# SMACT >= 3 defaults to a filtered ICSD-2024 set, which changes the verdict on e.g. AlCaO3 and RbTlO3.
SMACT_OXIDATION_STATE_SET = "smact14"
# CDVAE compute_metrics.RecEval: StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) for match rate and RMSE.
MATCH_STOL = 0.5
MATCH_LTOL = 0.3
MATCH_ANGLE_TOL = 10.0
# Uniqueness and novelty: pymatgen's StructureMatcher defaults (ltol 0.2, stol 0.3, angle_tol 5°), as used by
# DiffCSP/MatterGen-style uniqueness and novelty checks; stricter than the reconstruction matcher above.
DEDUP_STOL = 0.3
DEDUP_LTOL = 0.2
DEDUP_ANGLE_TOL = 5.0


@dataclass(frozen=True)
class CoverageCutoffs:
    """Coverage thresholds: fingerprint distances (struct: CrystalNN 'ops' space; comp: standardised Magpie space)."""

    struct: float
    comp: float


# CDVAE compute_metrics.COV_Cutoffs ('mp20', 'carbon', 'perovskite'), keyed by matsim's dataset names.
COVERAGE_CUTOFFS: dict[str, CoverageCutoffs] = {
    "mp_20": CoverageCutoffs(struct=0.4, comp=10.0),
    "carbon_24": CoverageCutoffs(struct=0.2, comp=4.0),
    "perov_5": CoverageCutoffs(struct=0.2, comp=4.0),
}

# The composition-fingerprint standardisation every coverage uses unless one is passed (see the module docstring).
COMPOSITION_SCALER_FILE = Path(__file__).with_name("data") / "magpie_scaler_mp20.json"

READABLE_SUFFIXES = (".cif", ".extxyz", ".xyz", ".csv")


# --- readers ---------------------------------------------------------------------------------------------------


def _structure_from_cif(text: str) -> Structure | None:
    """Parse one CIF string; ``None`` when pymatgen cannot build a structure from it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception:  # pymatgen raises many types on broken CIFs; a broken sample is a failed sample
        return None


def read_csv_structures(path: Path, column: str = "cif") -> list[Structure | None]:
    """Read a CDVAE-style CSV whose ``column`` holds one CIF per row.

    Returns one entry per row; rows whose CIF cannot be parsed are ``None``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"structure file not found: {path}")
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise InputFileError(f"{path}: no '{column}' column (columns: {reader.fieldnames})")
        return [_structure_from_cif(row[column]) for row in reader]


def _read_cif_file(path: Path) -> list[Structure | None]:
    """All structures of a CIF file (one per data block); a file that does not parse counts as one failed sample."""
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(CifParser(path).parse_structures(primitive=False))
    except Exception:
        return [None]


def _read_extxyz_file(path: Path) -> list[Structure | None]:
    """All frames of an (ext)xyz file; a frame without a 3D cell is a failed sample."""
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception as exc:
        raise InputFileError(f"cannot read {path}: {exc}") from exc
    structures: list[Structure | None] = []
    for atoms in frames:
        try:
            structures.append(AseAtomsAdaptor.get_structure(atoms))
        except Exception:
            structures.append(None)
    return structures


def _read_file(path: Path) -> list[Structure | None]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_structures(path)
    if suffix == ".cif":
        return _read_cif_file(path)
    if suffix in (".extxyz", ".xyz"):
        return _read_extxyz_file(path)
    raise InputFileError(f"{path}: unsupported structure file (expected one of {', '.join(READABLE_SUFFIXES)})")


def read_structures(paths: Iterable[Path]) -> list[Structure | None]:
    """Read samples from files and directories (CIF, extxyz/xyz, CDVAE CSV with a ``cif`` column).

    A directory contributes its readable files in sorted order. Unparseable samples are kept as ``None`` so that
    they count as invalid in every denominator; a missing path or unsupported file type raises ``InputFileError``.
    """
    structures: list[Structure | None] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in READABLE_SUFFIXES)
            if not files:
                raise InputFileError(f"{path}: no {', '.join(READABLE_SUFFIXES)} files in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise InputFileError(f"structure file or directory not found: {path}")
        for file in files:
            structures.extend(_read_file(file))
    return structures


# --- validity --------------------------------------------------------------------------------------------------


def structure_validity(structure: Structure | None) -> bool:
    """CDVAE structural validity: cell volume ≥ 0.1 Å³ and all distances ≥ 0.5 Å, periodic images included.

    Unlike CDVAE's minimum-image distance matrix this also catches an atom overlapping its own periodic image
    (a lattice vector shorter than the cutoff).
    """
    if structure is None or len(structure) == 0:
        return False
    lattice = structure.lattice
    if not np.all(np.isfinite(lattice.matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        return False
    if abs(lattice.volume) < MIN_CELL_VOLUME:
        return False
    distances = structure.distance_matrix + np.eye(len(structure)) * (MIN_INTERATOMIC_DISTANCE + 1.0)
    if distances.min() < MIN_INTERATOMIC_DISTANCE:
        return False
    images = lattice.get_points_in_sphere(np.zeros((1, 3)), np.zeros(3), MIN_INTERATOMIC_DISTANCE)
    return all(image[1] < 1e-8 for image in images)


def composition_validity(composition: Composition | None) -> bool:
    """CDVAE ``smact_validity``: some oxidation-state assignment is charge-neutral and passes the Pauling test.

    Single-element compositions and all-metal alloys are valid (``include_alloys=True``, as CDVAE). Oxidation
    states come from the pinned ``SMACT_OXIDATION_STATE_SET``. The verdict is SMACT's, found by a pruned search
    (:mod:`matsim.metrics.charge_balance`) instead of SMACT's enumeration of every combination.
    """
    if composition is None or len(composition) == 0:
        return False
    return smact_charge_balanced(composition, SMACT_OXIDATION_STATE_SET)


# --- fingerprints and coverage ---------------------------------------------------------------------------------


@functools.cache
def _featurizers() -> tuple[Any, Any]:
    """matminer's CrystalNN 'ops' site fingerprint (61 features) and Magpie ElementProperty (132 features)."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


def structure_fingerprint(structure: Structure | None) -> np.ndarray | None:
    """Site-averaged CrystalNN 'ops' fingerprint, shape (61,); ``None`` if it cannot be computed (as CDVAE)."""
    if structure is None:
        return None
    site_featurizer, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [site_featurizer.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # CrystalNN fails on degenerate geometries; CDVAE treats that as "no fingerprint"
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(composition: Composition | None) -> np.ndarray | None:
    """Magpie element-property statistics of a composition, shape (132,); NaN where Magpie has no data."""
    if composition is None or len(composition) == 0:
        return None
    _, comp_featurizer = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(comp_featurizer.featurize(composition), dtype=float)


@dataclass(frozen=True)
class CompositionScaler:
    """Per-feature standardisation of composition fingerprints; NaN features map to 0 after scaling (as CDVAE)."""

    means: np.ndarray
    stds: np.ndarray

    @classmethod
    def fit(cls, fingerprints: np.ndarray) -> CompositionScaler:
        """Fit on an (n, d) array: NaN-aware mean/std, zero or undefined stds replaced by 1."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nan_to_num(np.nanmean(fingerprints, axis=0), nan=0.0)
            stds = np.nan_to_num(np.nanstd(fingerprints, axis=0), nan=1.0)
        return cls(means=means, stds=np.where(stds == 0.0, 1.0, stds))

    def transform(self, fingerprints: np.ndarray) -> np.ndarray:
        """Standardise an (n, d) array."""
        return np.nan_to_num((fingerprints - self.means) / self.stds, nan=0.0)

    def save(self, path: Path, provenance: dict[str, Any]) -> None:
        """Write means, stds and where they came from as JSON."""
        payload = {"provenance": provenance, "means": self.means.tolist(), "stds": self.stds.tolist()}
        path.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = COMPOSITION_SCALER_FILE) -> CompositionScaler:
        """Read a scaler written by :meth:`save` (default: the shipped MP-20 statistics)."""
        payload = json.loads(Path(path).read_text())
        return cls(means=np.asarray(payload["means"], dtype=float), stds=np.asarray(payload["stds"], dtype=float))


@functools.cache
def _shipped_scaler() -> CompositionScaler:
    return CompositionScaler.load()


@dataclass(frozen=True)
class Fingerprints:
    """Fingerprints of a set: rows of ``struct`` (n, 61) and ``comp`` (n, 132) for samples where both exist."""

    struct: np.ndarray
    comp: np.ndarray


def fingerprints(structures: Sequence[Structure | None], workers: int = 1) -> Fingerprints:
    """Fingerprints of the samples that have them (samples without a structure fingerprint are dropped).

    ``workers`` > 1 computes them in that many (spawned) processes; CrystalNN takes ~0.1-1 s per structure, so
    this is what bounds scoring 10,000 samples. The result does not depend on ``workers``.
    """
    if workers > 1 and len(structures) > 1:
        chunk = max(1, len(structures) // (4 * workers))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pairs = list(pool.map(_fingerprint_pair, structures, chunksize=chunk))
    else:
        pairs = [_fingerprint_pair(structure) for structure in structures]
    struct_rows = [struct_fp for struct_fp, _ in pairs if struct_fp is not None]
    comp_rows = [comp_fp for struct_fp, comp_fp in pairs if struct_fp is not None]
    return Fingerprints(
        struct=np.asarray(struct_rows, dtype=float).reshape(len(struct_rows), -1),
        comp=np.asarray(comp_rows, dtype=float).reshape(len(comp_rows), -1),
    )


def _fingerprint_pair(structure: Structure | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(structure, composition) fingerprints of one sample; (None, None) without a structure fingerprint."""
    struct_fp = structure_fingerprint(structure)
    if struct_fp is None:
        return None, None
    return struct_fp, composition_fingerprint(structure.composition)


def coverage(
    generated: Fingerprints,
    reference: Fingerprints,
    cutoffs: CoverageCutoffs,
    n_generated: int,
    scaler: CompositionScaler,
) -> tuple[float, float]:
    """CDVAE COV-R and COV-P.

    COV-R: fraction of reference crystals with a generated crystal within both cutoffs.
    COV-P: number of generated crystals with a reference crystal within both cutoffs, divided by ``n_generated``
    (all samples, including those without a fingerprint).
    """
    if len(reference.struct) == 0:
        raise ConfigError("coverage needs a non-empty reference set")
    if len(generated.struct) == 0:
        return 0.0, 0.0
    struct_dist = cdist(generated.struct, reference.struct)
    comp_dist = cdist(scaler.transform(generated.comp), scaler.transform(reference.comp))
    recall_hit = (struct_dist.min(axis=0) <= cutoffs.struct) & (comp_dist.min(axis=0) <= cutoffs.comp)
    precision_hit = (struct_dist.min(axis=1) <= cutoffs.struct) & (comp_dist.min(axis=1) <= cutoffs.comp)
    return float(recall_hit.mean()), float(precision_hit.sum() / n_generated)


# --- distributions ---------------------------------------------------------------------------------------------


def density_emd(generated: Sequence[Structure], reference: Sequence[Structure]) -> float:
    """Wasserstein-1 distance between the density distributions (g/cm³) of two sets."""
    return float(wasserstein_distance([s.density for s in generated], [s.density for s in reference]))


def n_elements_emd(generated: Sequence[Structure], reference: Sequence[Structure]) -> float:
    """Wasserstein-1 distance between the distributions of the number of distinct elements per structure."""
    return float(
        wasserstein_distance(
            [len(s.composition.elements) for s in generated], [len(s.composition.elements) for s in reference]
        )
    )


# --- matching, uniqueness, novelty -----------------------------------------------------------------------------


def reconstruction_matcher() -> StructureMatcher:
    """CDVAE's matcher for match rate / RMSE (stol 0.5, ltol 0.3, angle_tol 10°)."""
    return StructureMatcher(stol=MATCH_STOL, ltol=MATCH_LTOL, angle_tol=MATCH_ANGLE_TOL)


def dedup_matcher() -> StructureMatcher:
    """Matcher for uniqueness and novelty (pymatgen defaults)."""
    return StructureMatcher(stol=DEDUP_STOL, ltol=DEDUP_LTOL, angle_tol=DEDUP_ANGLE_TOL)


def match_rate_and_rmse(
    predictions: Sequence[Structure | None], ground_truth: Sequence[Structure], valid: Sequence[bool]
) -> tuple[float, float | None]:
    """CDVAE reconstruction metrics of aligned pairs (prediction i vs. ground truth i).

    Returns the match rate (matched / all predictions; invalid or ``None`` predictions never match) and the mean
    RMS displacement of matched pairs, normalised by (V/n)^(1/3) as pymatgen's ``get_rms_dist``; ``None`` if none
    matched.
    """
    if len(predictions) != len(ground_truth):
        raise ConfigError(f"match rate needs aligned sets: {len(predictions)} samples vs {len(ground_truth)} targets")
    if not predictions:
        return 0.0, None
    matcher = reconstruction_matcher()
    rms: list[float] = []
    for pred, target, ok in zip(predictions, ground_truth, valid, strict=True):
        if not ok or pred is None:
            continue
        try:
            result = matcher.get_rms_dist(pred, target)
        except Exception:  # the matcher fails on some degenerate lattices: counts as no match, as in CDVAE
            result = None
        if result is not None:
            rms.append(float(result[0]))
    return len(rms) / len(predictions), (float(np.mean(rms)) if rms else None)


def distinct_groups(structures: Sequence[Structure | None]) -> list[int | None]:
    """Index of each structure's group representative under the dedup matcher; ``None`` for ``None`` samples.

    The grouping is pymatgen's ``StructureMatcher.group_structures`` (greedy, in sample order: the first unmatched
    structure of a composition becomes a representative and takes every later one that matches it), with pairs
    that cannot match skipped before the matcher runs (:meth:`_ReducedCell.may_match`): the same groups, 1.6-4×
    faster on carbon_24 sample sets, where all samples share one formula.
    """
    labels: list[int | None] = [None] * len(structures)
    buckets: dict[tuple[str, int], list[tuple[int, _ReducedCell]]] = defaultdict(list)
    for index, structure in enumerate(structures):
        if structure is not None:
            cell = _ReducedCell.of(structure)
            buckets[(structure.composition.reduced_formula, len(cell.structure))].append((index, cell))
    matcher = dedup_matcher()
    for unmatched in buckets.values():
        while unmatched:
            representative, reference = unmatched.pop(0)
            labels[representative] = representative
            rest = []
            for index, cell in unmatched:
                if reference.may_match(cell) and matcher.fit(
                    reference.structure, cell.structure, skip_structure_reduction=True
                ):
                    labels[index] = representative
                else:
                    rest.append((index, cell))
            unmatched = rest
    return labels


def distinct_mask(structures: Sequence[Structure | None]) -> list[bool]:
    """True for the first occurrence of each distinct structure (dedup matcher); ``None`` samples are False."""
    return [label == index for index, label in enumerate(distinct_groups(structures))]


def novel_mask(structures: Sequence[Structure | None], training: Sequence[Structure | None]) -> list[bool]:
    """True where a sample matches no training structure (dedup matcher); ``None`` samples are False.

    Training structures are indexed by reduced formula, so each sample is compared only with its own composition;
    every structure is reduced once (:class:`_ReducedCell`) instead of once per comparison, and pairs that cannot
    match are skipped (:meth:`_ReducedCell.may_match`): the verdicts of ``StructureMatcher.fit``.
    """
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for known in training:
        if known is not None:
            by_formula[known.composition.reduced_formula].append(known)
    wanted = {s.composition.reduced_formula for s in structures if s is not None}
    reduced_training = {formula: [_ReducedCell.of(known) for known in by_formula[formula]] for formula in wanted}
    matcher = dedup_matcher()
    mask = []
    for structure in structures:
        if structure is None:
            mask.append(False)
            continue
        cell = _ReducedCell.of(structure)
        known = reduced_training[structure.composition.reduced_formula]
        mask.append(
            not any(
                cell.may_match(k) and matcher.fit(cell.structure, k.structure, skip_structure_reduction=True)
                for k in known
            )
        )
    return mask


@dataclass(frozen=True)
class _ReducedCell:
    """A structure as ``StructureMatcher`` compares it, with the lattice lengths that bound what it can match.

    ``structure`` is the Niggli-reduced primitive cell (what ``fit`` makes of both structures on every call);
    ``minima`` are its lattice's successive minima (the sorted lengths of its Niggli basis) and ``lengths`` the
    sorted lengths of the basis ``fit`` maps onto, both divided by V^(1/3), shape (3,).
    """

    structure: Structure
    minima: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, structure: Structure) -> _ReducedCell:
        reduced = structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()
        scale = reduced.volume ** (1.0 / 3.0)
        minima = np.sort(reduced.lattice.get_niggli_reduced_lattice().abc) / scale
        return cls(structure=reduced, minima=minima, lengths=np.sort(reduced.lattice.abc) / scale)

    def may_match(self, other: _ReducedCell) -> bool:
        """False only where ``dedup_matcher().fit(self, other)`` is certainly False.

        ``fit`` (no supercells) needs equal site counts, and, after scaling both cells to equal volume, three
        independent vectors of this lattice within a factor (1 + ltol) of ``other``'s basis lengths; then this
        lattice's k-th successive minimum is at most (1 + ltol) times ``other``'s k-th basis length.
        """
        if len(self.structure) != len(other.structure):
            return False
        slack = (1.0 + DEDUP_LTOL) * (1.0 + 1e-3)  # 1e-3: room for the Niggli reduction's tolerance
        return bool(np.all(self.minima <= slack * other.lengths))


# --- the typed result ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleFlags:
    """Per-sample verdicts, in sample order."""

    struct_valid: bool
    comp_valid: bool
    unique: bool
    novel: bool | None

    @property
    def valid(self) -> bool:
        """Structurally and compositionally valid."""
        return self.struct_valid and self.comp_valid


@dataclass(frozen=True)
class CrystalMetrics:
    """All crystal metrics of one sample set. Fractions are in [0, 1] over all ``n`` samples unless named ``_valid``.

    ``None`` marks a metric that could not be computed with the inputs given (no coverage without a dataset's
    cutoffs, no novelty without a training set, no match rate without aligned ground truth, no EMD without a valid
    sample). EMDs are in g/cm³ (density) and elements (n_elements); ``rmse`` is normalised by (V/n)^(1/3).
    ``uniqueness_valid`` counts the groups of :func:`distinct_groups` (over all samples) with a valid member, per
    valid sample.
    """

    n: int
    n_valid: int
    struct_validity: float
    comp_validity: float
    validity: float
    cov_r: float | None
    cov_p: float | None
    emd_density: float | None
    emd_n_elements: float | None
    uniqueness: float
    uniqueness_valid: float | None
    novelty: float | None
    novelty_valid: float | None
    match_rate: float | None
    rmse: float | None
    thresholds: dict[str, Any]
    versions: dict[str, str]
    samples: tuple[SampleFlags, ...] = field(repr=False)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict (per-sample flags only on request)."""
        data = dataclasses.asdict(self)
        if not include_samples:
            del data["samples"]
        return data


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the metrics depend on."""
    versions = {}
    for package in ("matsim", "pymatgen", "SMACT", "matminer", "numpy", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def evaluate_crystals(
    samples: Sequence[Structure | None],
    reference: Sequence[Structure] | None = None,
    training: Sequence[Structure | None] | None = None,
    ground_truth: Sequence[Structure] | None = None,
    dataset: str | None = None,
    scaler: CompositionScaler | None = None,
    workers: int = 1,
    reference_fingerprints: Fingerprints | None = None,
) -> CrystalMetrics:
    """Compute every crystal metric of ``samples``.

    Args:
        samples: generated structures; ``None`` for samples that failed to decode (they count as invalid).
        reference: the distribution to compare with for coverage and EMDs (CDVAE: the test set).
        training: training structures, for novelty.
        ground_truth: targets aligned with ``samples``, for match rate and RMSE (reconstruction / CSP).
        dataset: ``"mp_20"``, ``"carbon_24"`` or ``"perov_5"``, selecting CDVAE's coverage cutoffs.
        scaler: composition-fingerprint standardisation; the shipped MP-20 statistics when omitted.
        workers: processes for the coverage fingerprints (:func:`fingerprints`).
        reference_fingerprints: ``fingerprints(reference)`` computed once by a caller that scores several sample
            sets against the same reference.
    """
    if dataset is not None and dataset not in COVERAGE_CUTOFFS:
        raise ConfigError(f"unknown dataset '{dataset}' (known: {', '.join(COVERAGE_CUTOFFS)})")
    n = len(samples)
    if n == 0:
        raise ConfigError("no samples to score")
    struct_ok = [structure_validity(s) for s in samples]
    comp_ok = [s is not None and composition_validity(s.composition) for s in samples]
    valid_ok = [a and b for a, b in zip(struct_ok, comp_ok, strict=True)]
    valid = [s for s, ok in zip(samples, valid_ok, strict=True) if ok]
    groups = distinct_groups(samples)
    unique = [label == index for index, label in enumerate(groups)]
    novel = novel_mask(samples, training) if training is not None else None

    thresholds: dict[str, Any] = {
        "min_interatomic_distance_A": MIN_INTERATOMIC_DISTANCE,
        "min_cell_volume_A3": MIN_CELL_VOLUME,
        "smact_oxidation_state_set": SMACT_OXIDATION_STATE_SET,
        "match_matcher": {"stol": MATCH_STOL, "ltol": MATCH_LTOL, "angle_tol": MATCH_ANGLE_TOL},
        "dedup_matcher": {"stol": DEDUP_STOL, "ltol": DEDUP_LTOL, "angle_tol": DEDUP_ANGLE_TOL},
    }
    cov_r = cov_p = emd_density = emd_n_elements = None
    if reference is not None and dataset is not None:
        cutoffs = COVERAGE_CUTOFFS[dataset]
        ref_fps = reference_fingerprints or fingerprints(reference, workers)
        comp_scaler = scaler or _shipped_scaler()
        cov_r, cov_p = coverage(fingerprints(samples, workers), ref_fps, cutoffs, n, comp_scaler)
        thresholds["coverage_cutoffs"] = dataclasses.asdict(cutoffs) | {"dataset": dataset}
        thresholds["comp_scaler"] = "given" if scaler else f"MP-20 statistics ({COMPOSITION_SCALER_FILE.name})"
    if reference is not None and valid:
        emd_density = density_emd(valid, reference)
        emd_n_elements = n_elements_emd(valid, reference)
    match_rate = rmse = None
    if ground_truth is not None:
        match_rate, rmse = match_rate_and_rmse(samples, ground_truth, valid_ok)

    return CrystalMetrics(
        n=n,
        n_valid=len(valid),
        struct_validity=sum(struct_ok) / n,
        comp_validity=sum(comp_ok) / n,
        validity=len(valid) / n,
        cov_r=cov_r,
        cov_p=cov_p,
        emd_density=emd_density,
        emd_n_elements=emd_n_elements,
        uniqueness=sum(unique) / n,
        uniqueness_valid=_fraction(len({groups[i] for i, ok in enumerate(valid_ok) if ok}), len(valid)),
        novelty=sum(novel) / n if novel is not None else None,
        novelty_valid=(
            None
            if novel is None
            else _fraction(sum(v and ok for v, ok in zip(novel, valid_ok, strict=True)), len(valid))
        ),
        match_rate=match_rate,
        rmse=rmse,
        thresholds=thresholds,
        versions=library_versions(),
        samples=tuple(
            SampleFlags(struct_valid=a, comp_valid=b, unique=u, novel=None if novel is None else novel[i])
            for i, (a, b, u) in enumerate(zip(struct_ok, comp_ok, unique, strict=True))
        ),
    )
