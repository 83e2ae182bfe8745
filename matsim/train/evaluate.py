"""Errors of a potential on labelled frames: energy MAE/RMSE per atom and per structure, force MAE/RMSE.

Conventions of the field (MACE, NequIP, Allegro papers): energy errors per atom are |E_pred - E_ref| / N averaged
over structures; force errors are over all Cartesian components. Reported in meV/atom, meV and meV/Å.

:class:`ErrorAccumulator` keeps sums in one float64 tensor, so DDP ranks add theirs with one ``all_reduce``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from matsim.core.graph import AtomGraph
from matsim.datasets.atoms import DataKeys
from matsim.datasets.graphs import MASK_FIELDS, GraphDataset
from matsim.models.forcefield import ForceField

__all__ = ["ErrorAccumulator", "evaluate_dataset", "evaluate_checkpoint", "batches"]

_SUMS = (
    "structures", "energy_structures", "energy_abs_per_atom", "energy_sq_per_atom", "energy_abs", "energy_sq",
    "force_components", "forces_abs", "forces_sq", "stress_components", "stress_abs", "stress_sq", "loss",
)


class ErrorAccumulator:
    """Running sums of errors over batches; :meth:`metrics` turns them into MAE/RMSE in meV units."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=device)
        self.per_structure: list[dict[str, Any]] = []
        self.keep_per_structure = False

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        self.sums[_SUMS.index(name)] += value.detach().to(torch.float64) if torch.is_tensor(value) else value

    @torch.no_grad()
    def add(self, pred: dict[str, torch.Tensor], graph: AtomGraph, loss: torch.Tensor | None = None) -> None:
        n = graph.atoms_per_system().to(torch.float64)
        num_systems = graph.num_systems
        self._add("structures", num_systems)
        if loss is not None:
            self._add("loss", loss * num_systems)
        if getattr(graph, "ref_energy", None) is not None:
            error = pred["energy"].detach().to(torch.float64) - graph.ref_energy.to(torch.float64)
            labelled = _label_mask(graph, "energy")
            frames = graph.frame_id
            if labelled is not None:
                error, n, frames = error[labelled], n[labelled], frames[labelled]
            self._add("energy_structures", error.numel())
            self._add("energy_abs_per_atom", (error / n).abs().sum())
            self._add("energy_sq_per_atom", ((error / n) ** 2).sum())
            self._add("energy_abs", error.abs().sum())
            self._add("energy_sq", (error**2).sum())
            if self.keep_per_structure:
                for b, (e, count, frame) in enumerate(zip(error.tolist(), n.tolist(), frames.tolist())):
                    self.per_structure.append(
                        {"frame": int(frame), "n_atoms": int(count), "energy_error_meV": 1000.0 * e,
                         "energy_error_meV_per_atom": 1000.0 * e / count}
                    )
        if getattr(graph, "ref_forces", None) is not None and "forces" in pred:
            error = pred["forces"].detach().to(torch.float64) - graph.ref_forces.to(torch.float64)
            labelled = _label_mask(graph, "forces")
            if labelled is not None:
                error = error[labelled]
            self._add("force_components", error.numel())
            self._add("forces_abs", error.abs().sum())
            self._add("forces_sq", (error**2).sum())
        if getattr(graph, "ref_stress", None) is not None and "stress" in pred:
            error = pred["stress"].detach().to(torch.float64) - graph.ref_stress.to(torch.float64)
            labelled = _label_mask(graph, "stress")
            if labelled is not None:
                error = error[labelled]
            self._add("stress_components", error.numel())
            self._add("stress_abs", error.abs().sum())
            self._add("stress_sq", (error**2).sum())

    def all_reduce(self) -> None:
        """Sum over DDP ranks (no-op without a process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    def metrics(self) -> dict[str, float]:
        s = dict(zip(_SUMS, self.sums.tolist()))
        out: dict[str, float] = {"n_structures": int(s["structures"])}
        count = max(s["structures"], 1.0)
        if s["energy_structures"]:
            m = s["energy_structures"]
            out["energy_mae_meV_per_atom"] = 1000.0 * s["energy_abs_per_atom"] / m
            out["energy_rmse_meV_per_atom"] = 1000.0 * math.sqrt(s["energy_sq_per_atom"] / m)
            out["energy_mae_meV"] = 1000.0 * s["energy_abs"] / m
            out["energy_rmse_meV"] = 1000.0 * math.sqrt(s["energy_sq"] / m)
        if s["force_components"]:
            out["forces_mae_meV_per_A"] = 1000.0 * s["forces_abs"] / s["force_components"]
            out["forces_rmse_meV_per_A"] = 1000.0 * math.sqrt(s["forces_sq"] / s["force_components"])
        if s["stress_components"]:
            out["stress_mae_meV_per_A3"] = 1000.0 * s["stress_abs"] / s["stress_components"]
            out["stress_rmse_meV_per_A3"] = 1000.0 * math.sqrt(s["stress_sq"] / s["stress_components"])
        if s["loss"]:
            out["loss"] = s["loss"] / count
        return out


def batches(dataset: GraphDataset, batch_size: int, indices: Iterable[int] | None = None) -> Iterable[AtomGraph]:
    """Batches of ``dataset`` in order (of ``indices`` when given), gathered by :meth:`GraphDataset.batch`."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        yield dataset.batch(order[start : start + batch_size])


def evaluate_dataset(
    model: nn.Module,
    dataset: GraphDataset,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    per_structure: bool = False,
    compute_stress: bool | None = None,
) -> dict[str, Any]:
    """Errors of ``model`` (a potential) on every frame of ``dataset``; ``per_structure`` adds a list of energy errors."""
    forcefield = ForceField(model).eval()
    dtype = next(model.parameters()).dtype
    dataset = dataset.with_dtype(dtype)
    stress = ("stress" in dataset.targets) if compute_stress is None else compute_stress
    acc = ErrorAccumulator(device)
    acc.keep_per_structure = per_structure
    for graph in batches(dataset, batch_size):
        graph = graph.to(device)
        pred = forcefield(graph, compute_forces="forces" in dataset.targets, compute_stress=stress)
        acc.add(pred, graph)
    out: dict[str, Any] = acc.metrics()
    if per_structure:
        out["per_structure"] = acc.per_structure
    return out


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    energy_key: str = "energy",
    forces_key: str = "forces",
    batch_size: int = 16,
    device: str = "auto",
    per_structure: bool = True,
    dispersion: bool = True,
) -> dict[str, Any]:
    """Errors of the model in ``checkpoint`` on the frames of ``data`` (energies and forces under the given keys).

    ``dispersion=False`` switches a model's dispersion term off first: the comparison for a model that adds D3 at
    inference to a fit made against dispersion-free reference data (BAMBOO's recipe).
    """
    from matsim.models import load_model, resolve_device

    device_ = resolve_device(device)
    model = load_model(checkpoint, device=device_)
    physical_terms = getattr(model, "physical_terms", None)
    if not dispersion and physical_terms is not None and "dispersion" in physical_terms:
        del physical_terms["dispersion"]
    dataset = GraphDataset.from_file(
        data, cutoff=model.cutoff, keys=DataKeys(energy=energy_key, forces=forces_key),
        targets=("energy", "forces"), cache=False,
    )
    return evaluate_dataset(model, dataset, batch_size=batch_size, device=device_, per_structure=per_structure)


def _label_mask(graph: AtomGraph, target: str) -> torch.Tensor | None:
    """Bool mask of the rows (systems or atoms) that carry a ``target`` label, where the data has frames without one
    (``missing_targets: skip``); None when every frame is labelled."""
    return getattr(graph, MASK_FIELDS[target], None)
