"""Metrics as pure functions on pymatgen Structures, rdkit molecules and arrays (never imports models, training, MD
or the CLI). Import the submodule you need, so that spectra metrics do not pull in pymatgen and crystal metrics do
not pull in rdkit:

``crystal``: validity, coverage, EMDs, match rate / RMSE, uniqueness, novelty (CDVAE definitions).
``hull``: energy above hull against any ASE-calculator oracle, stable and S.U.N. fractions, yields per 1,000.
``spectra``: top-k exact match, validity, uniqueness, fingerprint similarities, spectral cosine.
"""
