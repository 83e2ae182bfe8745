"""Process-group set-up for DDP under torchrun: rank, world size, device, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """Process-group membership from the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    active: bool = False

    @classmethod
    def from_env(cls, use_cuda: bool) -> "Distributed":
        """Join the process group when started by ``torchrun`` (it sets ``RANK`` and ``WORLD_SIZE``), also with one
        process (so ``torchrun --nproc_per_node=1`` runs the whole DDP path); a plain process trains alone."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
            owns = True
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns, active=True)

    @property
    def enabled(self) -> bool:
        return self.active

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
