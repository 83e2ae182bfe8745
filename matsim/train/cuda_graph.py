"""The whole training step of a potential captured as one CUDA graph (``training.cuda_graph: true``).

Why: a training step of an e3nn model on a small molecule is a few thousand tiny kernels (forward, forces by a
first backward, the loss's second backward, clipping, AdamW); on an H100 the step is bound by launching them from
Python (benchmarks/train_step_cuda.md: 190 ms per step for 16 ethanols, the GPU mostly idle). Replaying a captured
CUDA graph launches the same kernels without Python in between.

A CUDA graph needs every tensor shape fixed. Molecular datasets of one molecule (rMD17, 3BPA, acac: every frame has
the same atoms) get that from two choices:

- **All pairs as edges.** Each molecule's graph holds every ordered pair i ≠ j, not only the pairs within the
  cutoff, so the edge list is the same for every batch. The extra pairs contribute exactly nothing, value or
  gradient: every potential's edge terms carry a smooth envelope that is identically zero beyond its cutoff (the
  conformance suite checks it, ``test_edges_beyond_the_cutoff_contribute_nothing``). The graph is marked
  ``static_edges`` so :class:`~matsim.models.forcefield.ForceField` keeps the list as it is.
- **Whole batches only.** The sampler drops the last, smaller batch of an epoch (shuffling changes which frames
  that is from epoch to epoch).

Each step copies the batch's positions, numbers and labels into the captured graph's input tensors, sets the
learning rate (a device tensor read by AdamW with ``capturable=True``) and replays the graph. The first
``warmup_steps`` steps run eagerly on a side stream, as CUDA graph capture requires; they are ordinary training
steps on their batches. The EMA update stays outside the graph (its decay changes every step).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from matsim.core.errors import ConfigError
from matsim.core.graph import AtomGraph

__all__ = ["StaticMoleculeBatch", "CapturedTrainStep", "check_static_dataset"]

#: Eager steps before capture (PyTorch's whole-network capture example warms up for three iterations, so that
#: lazily created state (AdamW moments, cuBLAS workspaces) exists before the graph records memory addresses).
WARMUP_STEPS = 3


def check_static_dataset(frame_numbers: Sequence[Sequence[int]], periodic: Sequence[bool]) -> int:
    """The number of atoms per frame when every frame is a molecule with that same count; a :class:`ConfigError`
    naming what breaks the fixed shapes a CUDA graph needs otherwise."""
    if any(periodic):
        raise ConfigError("training.cuda_graph: needs non-periodic molecules (the data has periodic frames)")
    counts = sorted({len(n) for n in frame_numbers})
    if len(counts) != 1:
        raise ConfigError(f"training.cuda_graph: every frame must have the same number of atoms (found {counts[:5]})")
    return counts[0]


class StaticMoleculeBatch:
    """Fixed-shape input tensors for batches of ``num_systems`` molecules of ``num_atoms`` atoms with all-pairs edges.

    :meth:`load` copies a batch made by :meth:`GraphDataset.batch` (same shapes) into the tensors of :attr:`graph`
    in place, so a captured graph reading them sees the new batch.
    """

    def __init__(self, num_systems: int, num_atoms: int, targets: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device) -> None:
        n = num_systems * num_atoms
        systems = torch.arange(num_systems, device=device)
        local_i, local_j = torch.meshgrid(torch.arange(num_atoms, device=device),
                                          torch.arange(num_atoms, device=device), indexing="ij")
        off_diagonal = local_i != local_j
        pairs = torch.stack([local_i[off_diagonal], local_j[off_diagonal]])  # (2, A(A-1))
        edge_index = (pairs.unsqueeze(1) + (systems * num_atoms).view(1, -1, 1)).reshape(2, -1)
        self.graph = AtomGraph(
            num_nodes=n,
            pos=torch.zeros(n, 3, dtype=dtype, device=device),
            numbers=torch.zeros(n, dtype=torch.long, device=device),
            cell=torch.zeros(num_systems, 3, 3, dtype=dtype, device=device),
            pbc=torch.zeros(num_systems, 3, dtype=torch.bool, device=device),
            charge=torch.zeros(num_systems, dtype=dtype, device=device),
            batch=systems.repeat_interleave(num_atoms),
            ptr=torch.arange(num_systems + 1, device=device) * num_atoms,
            edge_index=edge_index,
            shifts=torch.zeros(edge_index.shape[1], 3, dtype=dtype, device=device),
            **{field: torch.zeros_like(value, device=device) for field, value in targets.items()},
        )
        self.graph.static_edges = True
        self.target_fields = list(targets)
        self.num_systems, self.num_atoms = num_systems, num_atoms

    def load(self, batch: AtomGraph) -> AtomGraph:
        """Copy ``batch`` (pos, numbers, charge and the ``ref_*`` targets) into :attr:`graph`; returns it."""
        if batch.num_systems != self.num_systems or batch.pos.shape[0] != self.num_systems * self.num_atoms:
            raise ValueError(f"a static batch holds {self.num_systems} molecules of {self.num_atoms} atoms; got "
                             f"{batch.num_systems} systems with {batch.pos.shape[0]} atoms")
        g = self.graph
        g.pos.copy_(batch.pos, non_blocking=True)
        g.numbers.copy_(batch.numbers, non_blocking=True)
        g.charge.copy_(batch.charge, non_blocking=True)
        for field in self.target_fields:
            g[field].copy_(batch[field], non_blocking=True)
        g.numbers_present = getattr(batch, "numbers_present", None)
        return g


class CapturedTrainStep:
    """One training step (loss, backward, gradient clipping, optimiser step) replayed from a CUDA graph.

    Args:
        step_module: ``graph -> (loss, terms, predictions)`` (the trainer's ForceField + loss module).
        optimizer: an optimiser built with ``capturable=True`` and a tensor learning rate on the device.
        params: the parameters to clip.
        clip_grad_norm: max gradient norm, or None.
        static: the fixed-shape input batch.
        capture: record and replay a CUDA graph (False runs the same code eagerly, e.g. on CPU in tests).

    Calling it with a batch and a learning rate returns ``(loss, terms)`` of that batch: tensors that the next call
    overwrites (read or copy them before).
    """

    def __init__(self, step_module: Callable, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                 clip_grad_norm: float | None, static: StaticMoleculeBatch, capture: bool = True) -> None:
        self.step_module = step_module
        self.optimizer = optimizer
        self.params = params
        self.clip = clip_grad_norm
        self.static = static
        self.capture = capture
        self.steps_run = 0
        self.cuda_graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def _step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, terms, _ = self.step_module(self.static.graph)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.optimizer.step()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self, batch: AtomGraph, lr: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.static.load(batch)
        self._set_lr(lr)
        self.steps_run += 1
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            return self._step()
        if self.cuda_graph is None and self.steps_run <= WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self._step()
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.cuda_graph is None:
            self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's pool
            self.cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.cuda_graph):
                self.outputs = self._step()
        self.cuda_graph.replay()  # capturing records without running: replay runs this batch too
        assert self.outputs is not None
        return self.outputs
