"""Spectrum-to-structure retrieval baseline: rank the training molecules by the cosine similarity of their IR
spectra to a query spectrum.

This is the floor every learned elucidation model (DiffSpectra) must beat: it can only propose molecules it has
seen, so on a test set of new molecules its exact-match accuracy is zero by construction and the informative numbers
are similarity ones (max Tanimoto of the candidates to the truth, :mod:`matsim.metrics.spectra`). On a library that
contains the query molecule it measures how distinctive the spectra are.

Scores are cosine similarities in [0, 1] for non-negative spectra (1: identical shape); a molecule present in the
training file more than once (same canonical SMILES) appears once, with its best score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem

from matsim.core.errors import ConfigError
from matsim.datasets.spectra import read_spectra

__all__ = ["Candidate", "SpectraRetrieval"]

#: Query spectra scored per matrix product (memory: batch × n_train floats).
_QUERY_BATCH = 256


@dataclass(frozen=True)
class Candidate:
    """One proposed structure for a spectrum: SMILES and score (higher is better)."""

    smiles: str
    score: float


class SpectraRetrieval:
    """Nearest training spectra by cosine similarity.

    Args:
        spectra: (n, G) training spectra on ``grid`` (any positive scale: each is normalised to unit length).
        smiles: their n SMILES.
        grid: (G,) wavenumbers, cm⁻¹.
    """

    def __init__(self, spectra: np.ndarray, smiles: list[str], grid: np.ndarray) -> None:
        spectra = np.asarray(spectra, dtype=np.float32)
        if spectra.ndim != 2 or len(spectra) != len(smiles) or spectra.shape[1] != len(grid):
            raise ConfigError(f"retrieval needs (n, {len(grid)}) spectra for n SMILES, got {spectra.shape} for "
                              f"{len(smiles)}")
        if len(smiles) == 0:
            raise ConfigError("retrieval needs at least one training spectrum")
        self.grid = np.asarray(grid, dtype=float)
        self.smiles = list(smiles)
        self._unit = _unit_rows(spectra)
        self._keys = [_canonical(s) for s in smiles]

    @classmethod
    def from_file(cls, path: str | Path, rows: list[int] | None = None) -> "SpectraRetrieval":
        """The training set of a ``SPECTRA.h5`` file (all molecules, or the given ``rows``, e.g. a split's train)."""
        data = read_spectra(path)
        index = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=int)
        return cls(data.ir[index], [data.smiles[i] for i in index], data.grid)

    def rank(self, queries: np.ndarray, grid: np.ndarray, k: int = 20) -> list[list[Candidate]]:
        """The ``k`` best distinct training molecules for each of the (q, G) ``queries`` on ``grid``, best first."""
        if k < 1:
            raise ConfigError(f"-k must be at least 1, got {k}")
        if len(grid) != len(self.grid) or not np.allclose(grid, self.grid):
            raise ConfigError("the query spectra are on another wavenumber grid than the training spectra")
        queries = _unit_rows(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        ranked = []
        for start in range(0, len(queries), _QUERY_BATCH):
            scores = queries[start : start + _QUERY_BATCH] @ self._unit.T
            for row in scores:
                ranked.append(self._best_distinct(row, k))
        return ranked

    def _best_distinct(self, scores: np.ndarray, k: int) -> list[Candidate]:
        seen: set[str] = set()
        candidates = []
        for i in np.argsort(-scores, kind="stable"):
            if self._keys[i] in seen:
                continue
            seen.add(self._keys[i])
            candidates.append(Candidate(self.smiles[i], float(scores[i])))
            if len(candidates) == k:
                break
        return candidates


def _unit_rows(spectra: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(spectra, axis=1, keepdims=True)
    return np.divide(spectra, norms, out=np.zeros_like(spectra), where=norms > 0)


def _canonical(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    return smiles if mol is None else Chem.MolToSmiles(mol)
