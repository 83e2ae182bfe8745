"""Structure elucidation with a generative model of molecules from spectra (DiffSpectra): for each query spectrum,
sample candidate molecules conditioned on it, keep one per compound and rank them.

Per spectrum: ``samples`` (m ≥ k) molecules are drawn with classifier-free guidance, invalid ones dropped,
duplicates merged by the tautomer-canonical InChIKey of :func:`matsim.metrics.spectra.match_key` (the compound
identity the metrics use). Ranking:

- default: by sample frequency (the fraction of the m samples that are this compound; a Monte-Carlo estimate of
  the model's probability of the compound given the spectrum), ties in order of first appearance;
- ``rescore``: by the cosine similarity of the query to the candidate's own reference IR spectrum, recomputed with
  :func:`matsim.reference.spectra.ir_from_smiles` (GFN2-xTB by default; ~1 s per QM9 molecule on one core, so slow
  for many candidates), frequency breaking ties; a candidate whose spectrum fails scores 0.

The candidates are :class:`~matsim.models.spectra_retrieval.Candidate` (SMILES, score), as the retrieval baseline
gives, so ``matsim elucidate`` prints both the same way.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from rdkit import Chem

from matsim.core.errors import ConfigError, MatsimError
from matsim.metrics.spectra import match_key, spectral_cosine
from matsim.models.generative import GenerativeModel
from matsim.models.spectra_retrieval import Candidate

__all__ = ["elucidate_spectra"]


def elucidate_spectra(model: GenerativeModel, spectra: np.ndarray, k: int = 20, samples: int | None = None,
                      rescore: bool = False, seed: int = 0, spectra_per_batch: int = 1,
                      **settings: object) -> list[list[Candidate]]:
    """The ``k`` best distinct candidate molecules for each of the (q, G) ``spectra`` (module docstring).

    Args:
        model: a generative model with a ``"spectrum"`` condition (DiffSpectra), in eval mode.
        spectra: (q, G) query IR spectra on the model's grid (max-normalised).
        k: candidates per spectrum (fewer when the samples hold fewer distinct valid molecules).
        samples: molecules sampled per spectrum (default ``max(2 k, 32)``); at least ``k``.
        rescore: rank by the GFN2 spectrum of each candidate instead of sample frequency.
        seed: seed of the sampling: the spectra are sampled in chunks of ``spectra_per_batch`` (one model batch of
            ``spectra_per_batch * samples`` molecules; more keeps a GPU busy), the chunk starting at spectrum i
            with seed ``seed + i``; with the default 1 a spectrum's candidates do not depend on the other queries.
        settings: sampler settings of the model (``steps``, ``eta``, ``guidance``).
    """
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    samples = max(2 * k, 32) if samples is None else samples
    if samples < k:
        raise ConfigError(f"--samples ({samples}) must be at least -k ({k})")
    if "spectrum" not in getattr(model, "condition_keys", ()):
        raise ConfigError("this model is not conditioned on spectra (use a DiffSpectra checkpoint)")
    if spectra_per_batch < 1:
        raise ConfigError(f"spectra_per_batch must be at least 1, got {spectra_per_batch}")
    device = next(model.parameters()).device
    spectra = np.asarray(spectra, dtype=np.float32)
    reference_cache: dict[str, np.ndarray | None] = {}
    ranked = []
    for start in range(0, len(spectra), spectra_per_batch):
        chunk = spectra[start:start + spectra_per_batch]
        generator = torch.Generator(device=device).manual_seed(seed + start)
        molecules = model.sample(samples * len(chunk), {"spectrum": np.repeat(chunk, samples, axis=0)},
                                 generator=generator, **settings)
        for j, spectrum in enumerate(chunk):
            ranked.append(_rank(spectrum, molecules[j * samples:(j + 1) * samples], k, rescore, reference_cache))
    return ranked


def _rank(spectrum: np.ndarray, molecules: list, k: int, rescore: bool,
          reference_cache: dict[str, np.ndarray | None]) -> list[Candidate]:
    """The ``k`` best distinct valid molecules of one spectrum's samples (module docstring)."""
    counts: Counter[str] = Counter()
    smiles_of: dict[str, str] = {}
    for mol in molecules:
        smiles = Chem.MolToSmiles(mol) if mol is not None else None
        key = match_key(smiles) if smiles else None
        if key is None:
            continue
        counts[key] += 1
        smiles_of.setdefault(key, smiles)
    scored = [(count / len(molecules), smiles_of[key]) for key, count in counts.items()]  # first-appearance order
    if rescore:
        scored = [(_reference_cosine(spectrum, s, reference_cache), freq, s) for freq, s in scored]
    order = sorted(range(len(scored)), key=lambda j: tuple(-v for v in scored[j][:-1]))
    return [Candidate(scored[j][-1], float(scored[j][0])) for j in order[:k]]


def _reference_cosine(query: np.ndarray, smiles: str, cache: dict[str, np.ndarray | None]) -> float:
    """Cosine similarity of ``query`` to the reference IR spectrum of ``smiles`` (0 if it cannot be computed)."""
    from matsim.reference.spectra import ir_from_smiles

    if smiles not in cache:
        try:
            cache[smiles] = ir_from_smiles(smiles).spectrum
        except MatsimError:  # rdkit cannot embed it, the optimisation or SCF fails
            cache[smiles] = None
    reference = cache[smiles]
    if reference is None:
        return 0.0
    if len(reference) != len(query):
        raise ConfigError(f"--rescore computes spectra on {len(reference)} points, the queries have {len(query)}")
    return spectral_cosine(query, reference)
