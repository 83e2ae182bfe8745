"""Generation pipelines: sample crystals from a trained generative model, write them, score them.

``matsim generate CONFIG.yaml --output DIR`` runs :func:`matsim.generate.pipeline.generate_from_file`.
"""

from matsim.generate.config import GenerateConfig, ScoreSection, load_generate_config
from matsim.generate.pipeline import generate, generate_from_file

__all__ = ["GenerateConfig", "ScoreSection", "load_generate_config", "generate", "generate_from_file"]
