"""The one path from a potential's per-atom energies to total energy, forces and stress.

Training, the ASE calculator and MD all call :class:`ForceField`. Forces are -dE/dr; stress is the strain derivative
(1/V) dE/dε, built as the virial of the edge vectors, Σ r_ij ⊗ ∂E/∂r_ij, plus the explicit strain derivative of any
term that reads positions and cell directly (long-range electrostatics and dispersion). The cell is never gathered
per edge under autograd (that backward kernel dominates MACE's stress cost).

Sign conventions are ASE's: forces in eV/Å; stress in eV/Å³, positive under tension (``atoms.get_stress()``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from matsim.core.errors import ConfigError
from matsim.core.graph import AtomGraph
from matsim.models.base import Potential, numbers_checked

__all__ = ["ForceField"]


class ForceField(nn.Module):
    """Wraps a :class:`Potential` and returns energies, forces and stress of a batch of systems.

    Returns a dict with
        ``energy`` (B,) eV; ``energies`` (N,) eV; ``forces`` (N, 3) eV/Å when ``compute_forces``;
        ``stress`` (B, 3, 3) eV/Å³ when ``compute_stress`` (zeros for non-periodic systems);
        ``charges`` (N,) e when the potential predicts them; ``terms`` {name: (B,)} energy components.

    Args of ``forward``:
        graph: an AtomGraph with edges (possibly built with a skin: edges beyond ``potential.cutoff`` are dropped).
            Two optional host-side attributes (set by :meth:`GraphDataset.batch`) spare the GPU round trips of a
            training step: ``edge_cutoff`` (every edge is known to be shorter than this, so for a potential of at
            least this cutoff the edges are not measured and pruned) and ``numbers_present`` (the atomic numbers of
            the graph, checked against the potential's species on the host instead of on the device). A graph
            marked ``static_edges`` keeps its edge list as given, edges beyond the cutoff included (they contribute
            nothing; fixed shapes for a captured CUDA graph, :mod:`matsim.train.cuda_graph`).
        compute_forces / compute_stress: which derivatives to return.
        training: keep the autograd graph of the derivatives (for force/stress losses).

    Args of the constructor:
        potential: the model.
        compile: run the potential through ``torch.compile(dynamic=True)``: ``True`` for Inductor (fused GPU kernels;
            the first call compiles, about a minute; graph breaks at the model's host read-backs are fine; the
            model must be on a CUDA device), or the name of another ``torch.compile`` backend. For inference only:
            compiled graphs have no double backward, so ``training=True`` calls run the eager model.
    """

    def __init__(self, potential: Potential, compile: bool | str = False) -> None:
        super().__init__()
        self.potential = potential
        # kept off the module tree (a compiled wrapper registered as a child would duplicate the state dict)
        backend = "inductor" if compile is True else compile
        if backend and not potential.compilable:
            raise ConfigError(f"{type(potential).__name__} models cannot run through torch.compile; "
                              "set compile to false")
        on_cpu = all(p.device.type == "cpu" for p in potential.parameters())
        if backend == "inductor" and on_cpu:  # Inductor's C++ code generation fails on escaip (torch 2.13)
            raise ConfigError("compile needs the model on a CUDA device (Inductor does not compile it for the CPU)")
        compiled = torch.compile(potential, dynamic=True, backend=backend) if backend else None
        object.__setattr__(self, "_compiled_potential", compiled)

    def forward(
        self, graph: AtomGraph, compute_forces: bool = True, compute_stress: bool = False, training: bool = False
    ) -> dict[str, Any]:
        potential = self.potential
        conservative = compute_forces and not potential.direct_forces
        needs_grad = conservative or compute_stress
        batch = graph.system_index()
        num_systems = graph.num_systems
        inputs = copy.copy(graph)  # shallow: the fields replaced below never touch the caller's graph

        edge_index, edge_vec = _edges_within(graph, potential.cutoff)
        edge_vec = edge_vec.detach().requires_grad_(needs_grad)
        pos = graph.pos.detach().requires_grad_(conservative)
        cell = graph.cell.detach()
        strain = None
        if compute_stress:
            strain = torch.zeros(num_systems, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[batch])
            cell = cell + torch.bmm(cell, symmetric)
        inputs.pos, inputs.cell, inputs.edge_index, inputs.edge_vec = pos, cell, edge_index, edge_vec
        inputs.shifts = None

        present = getattr(graph, "numbers_present", None)
        if present is not None:
            potential.check_numbers(present)
        checked = numbers_checked() if present is not None else contextlib.nullcontext()
        run = self._compiled_potential if self._compiled_potential is not None and not training else potential
        with torch.set_grad_enabled(needs_grad or torch.is_grad_enabled()), checked:
            out = run(inputs)
        energies = out["energies"]
        energy = torch.zeros(num_systems, dtype=energies.dtype, device=energies.device).index_add(0, batch, energies)
        result: dict[str, Any] = {"energy": energy, "energies": energies, "terms": out.get("terms", {})}
        if "charges" in out:
            result["charges"] = out["charges"]
        if compute_forces and potential.direct_forces:
            result["forces"] = out["forces"]
        if not needs_grad:
            return result if training else _detached(result)

        wrt = [edge_vec] + ([pos] if conservative else []) + ([strain] if strain is not None else [])
        grads = torch.autograd.grad(
            energy.sum(), wrt, create_graph=training, retain_graph=training, allow_unused=True
        )
        d_edge = _zeros_if_none(grads[0], edge_vec)
        if conservative:
            d_pos = _zeros_if_none(grads[1], pos)
            forces = -d_pos
            forces = forces.index_add(0, edge_index[0], d_edge).index_add(0, edge_index[1], -d_edge)
            result["forces"] = forces
        if strain is not None:
            d_strain = _zeros_if_none(grads[-1], strain)
            edge_system = batch[edge_index[0]]
            virial = torch.zeros(num_systems, 9, dtype=pos.dtype, device=pos.device).index_add(
                0, edge_system, (edge_vec.unsqueeze(2) * d_edge.unsqueeze(1)).reshape(-1, 9)
            )
            d_energy_d_strain = virial.reshape(num_systems, 3, 3) + d_strain
            d_energy_d_strain = 0.5 * (d_energy_d_strain + d_energy_d_strain.transpose(1, 2))
            volume = torch.linalg.det(graph.cell).abs()
            periodic = graph.pbc.all(dim=1)
            safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
            stress = d_energy_d_strain / safe_volume[:, None, None]
            result["stress"] = torch.where(periodic[:, None, None], stress, torch.zeros_like(stress))
        return result if training else _detached(result)


def _detached(result: dict[str, Any]) -> dict[str, Any]:
    """Outputs cut from the autograd graph (inference: nothing downstream differentiates them)."""
    out = {k: v.detach() if torch.is_tensor(v) else v for k, v in result.items()}
    out["terms"] = {k: v.detach() for k, v in result["terms"].items()}
    return out


def _edges_within(graph: AtomGraph, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge indices and vectors (E', 3) of the edges shorter than ``cutoff`` (lists built with a skin are longer)."""
    if getattr(graph, "edge_index", None) is None:
        raise ValueError("the graph has no edges: build it with a cutoff (AtomGraph.build(..., cutoff=...))")
    vectors = graph.edge_vectors().detach()
    if getattr(graph, "static_edges", False):
        return graph.edge_index, vectors
    built_within = getattr(graph, "edge_cutoff", None)
    if built_within is not None and built_within <= cutoff:  # all shorter already: no mask, no GPU read-back
        return graph.edge_index, vectors
    keep = (vectors * vectors).sum(dim=1) < cutoff * cutoff
    if bool(keep.all()):
        return graph.edge_index, vectors
    return graph.edge_index[:, keep], vectors[keep]


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad
