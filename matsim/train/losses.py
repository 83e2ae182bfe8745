"""Weighted losses of a batch: energy per atom, forces, stress, charges and dipole; MSE or Huber.

Each term is the mean of the error function over its components (systems for the energy per atom, 3N force
components, 9B stress components, N charges, 3B dipole components); the loss is Σ weight × term. Predictions are the
dict of :class:`~matsim.models.forcefield.ForceField`; references are the ``ref_*`` fields of a
:class:`~matsim.datasets.graphs.GraphDataset` batch.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from matsim.core.graph import AtomGraph

__all__ = ["WeightedLoss", "predicted_dipole"]


def predicted_dipole(charges: torch.Tensor, graph: AtomGraph) -> torch.Tensor:
    """(B, 3) dipole Σ_i q_i r_i of each system, e·Å (positions as given; molecules need no origin shift if neutral)."""
    num_systems = graph.num_systems
    return torch.zeros(num_systems, 3, dtype=charges.dtype, device=charges.device).index_add(
        0, graph.system_index(), charges.unsqueeze(1) * graph.pos
    )


class WeightedLoss:
    """``loss = Σ_t w_t · mean(err(pred_t - ref_t))`` over the targets with a non-zero weight.

    Args:
        weights: {target: weight} for ``energy``, ``forces``, ``stress``, ``charges``, ``dipole``.
        kind: ``"mse"`` or ``"huber"``; ``huber_delta`` is the Huber threshold (in each term's units).
    """

    def __init__(self, weights: Mapping[str, float], kind: str = "mse", huber_delta: float = 0.01) -> None:
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss type must be mse or huber, got {kind!r}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) > 0}
        self.kind = kind
        self.huber_delta = float(huber_delta)

    @property
    def needs_forces(self) -> bool:
        return "forces" in self.weights

    @property
    def needs_stress(self) -> bool:
        return "stress" in self.weights

    @property
    def needs_charges(self) -> bool:
        return "charges" in self.weights or "dipole" in self.weights

    def _error(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if self.kind == "huber":
            return F.huber_loss(pred, ref, delta=self.huber_delta)
        return F.mse_loss(pred, ref)

    def terms(self, pred: Mapping[str, torch.Tensor], graph: AtomGraph) -> dict[str, torch.Tensor]:
        """Unweighted loss terms {target: scalar}."""
        out: dict[str, torch.Tensor] = {}
        for target in self.weights:
            if target == "energy":
                n = graph.atoms_per_system().to(pred["energy"].dtype)
                out[target] = self._error(pred["energy"] / n, graph.ref_energy / n)
            elif target == "forces":
                out[target] = self._error(pred["forces"], graph.ref_forces)
            elif target == "stress":
                out[target] = self._error(pred["stress"], graph.ref_stress)
            elif target == "charges":
                out[target] = self._error(pred["charges"], graph.ref_charges)
            elif target == "dipole":
                out[target] = self._error(predicted_dipole(pred["charges"], graph), graph.ref_dipole)
        return out

    def __call__(self, pred: Mapping[str, torch.Tensor], graph: AtomGraph) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, unweighted terms)."""
        terms = self.terms(pred, graph)
        total = sum(self.weights[t] * value for t, value in terms.items())
        return total, terms
