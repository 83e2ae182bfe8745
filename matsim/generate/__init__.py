"""Generation pipelines: sample crystals from a trained generative model (or a random-search baseline), write them,
score them; and elucidate molecules from spectra (:mod:`matsim.generate.elucidation`).

``matsim generate CONFIG.yaml --output DIR`` runs :func:`matsim.generate.pipeline.generate_from_file`. The crystal
pipeline (pymatgen) is imported on first use, so that molecule elucidation does not need pymatgen.
"""

from typing import Any

from matsim.generate.config import GenerateConfig, ScoreSection, load_generate_config

__all__ = ["GenerateConfig", "ScoreSection", "load_generate_config", "generate", "generate_from_file"]


def __getattr__(name: str) -> Any:
    if name in ("generate", "generate_from_file"):
        from matsim.generate import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'matsim.generate' has no attribute {name!r}")
