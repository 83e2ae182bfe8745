"""Building blocks shared by the potentials (radial bases, envelopes, attention blocks, long-range terms)."""

from matsim.models.layers.radial import BesselBasis, PolynomialEnvelope

__all__ = ["BesselBasis", "PolynomialEnvelope"]
