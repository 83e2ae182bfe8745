"""Building blocks shared by the potentials (radial bases, envelopes, attention blocks, long-range terms)."""

from matsim.models.layers.mlp import MLP
from matsim.models.layers.radial import BesselBasis, PolynomialEnvelope

__all__ = ["MLP", "BesselBasis", "PolynomialEnvelope"]
