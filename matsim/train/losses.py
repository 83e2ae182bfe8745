"""Weighted losses of a batch: energy per atom, forces, stress, charges and dipole; MSE or Huber.

Each term is the mean of the error function over its components (systems for the energy per atom, 3N force
components, 9B stress components, N charges, 3B dipole components); the loss is Σ weight × term. Predictions are the
dict of :class:`~matsim.models.forcefield.ForceField`; references are the ``ref_*`` fields of a
:class:`~matsim.datasets.graphs.GraphDataset` batch.

Mixed data: where a batch carries a label mask ``ref_<target>_mask`` (data read with ``missing_targets: skip``), the
term is the mean over the labelled components only, Σ_labelled err / (number of labelled components): unlabelled
frames (NaN labels) contribute nothing, value or gradient, and a batch without any label of that target gives 0.
Computed with ``torch.where`` and sums, without host synchronisation, so it also runs inside a captured CUDA graph.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from matsim.core.graph import AtomGraph
from matsim.datasets.graphs import MASK_FIELDS

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

    def _error(self, pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean error of ``pred`` against ``ref``; with ``mask`` (bool, over the leading dimension of both), the
        mean over the components of the rows where ``mask`` is True (rows where it is False may hold NaN)."""
        if mask is None:
            if self.kind == "huber":
                return F.huber_loss(pred, ref, delta=self.huber_delta)
            return F.mse_loss(pred, ref)
        rows = mask.reshape(mask.shape + (1,) * (pred.dim() - mask.dim()))
        # unlabelled rows get the (detached) prediction as their reference: error and gradient exactly 0, no NaN
        ref = torch.where(rows, ref, pred.detach())
        if self.kind == "huber":
            error = F.huber_loss(pred, ref, delta=self.huber_delta, reduction="none")
        else:
            error = F.mse_loss(pred, ref, reduction="none")
        count = (mask.sum() * math.prod(pred.shape[mask.dim():])).to(error.dtype).clamp(min=1.0)
        return error.sum() / count

    def terms(self, pred: Mapping[str, torch.Tensor], graph: AtomGraph) -> dict[str, torch.Tensor]:
        """Unweighted loss terms {target: scalar}."""
        out: dict[str, torch.Tensor] = {}
        for target in self.weights:
            mask = getattr(graph, MASK_FIELDS[target], None)
            if target == "energy":
                n = graph.atoms_per_system().to(pred["energy"].dtype)
                out[target] = self._error(pred["energy"] / n, graph.ref_energy / n, mask)
            elif target == "forces":
                out[target] = self._error(pred["forces"], graph.ref_forces, mask)
            elif target == "stress":
                out[target] = self._error(pred["stress"], graph.ref_stress, mask)
            elif target == "charges":
                out[target] = self._error(pred["charges"], graph.ref_charges, mask)
            elif target == "dipole":
                out[target] = self._error(predicted_dipole(pred["charges"], graph), graph.ref_dipole, mask)
        return out

    def __call__(self, pred: Mapping[str, torch.Tensor], graph: AtomGraph) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, unweighted terms)."""
        terms = self.terms(pred, graph)
        total = sum(self.weights[t] * value for t, value in terms.items())
        return total, terms
