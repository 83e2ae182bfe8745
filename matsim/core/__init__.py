"""Foundation shared by every part of matsim: atom graphs, neighbor lists, units, registries, checkpoints, configs.

Nothing here imports a higher layer of matsim.
"""

from matsim.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from matsim.core.config import StrictModel, load_config
from matsim.core.errors import CheckpointError, ConfigError, InputFileError, MatsimError, StructureError
from matsim.core.graph import AtomGraph
from matsim.core.neighbors import SkinNeighborList, batched_neighbor_list, neighbor_list
from matsim.core.registry import Registry

__all__ = [
    "AtomGraph", "Checkpoint", "CheckpointError", "ConfigError", "InputFileError", "MatsimError", "Registry",
    "SkinNeighborList", "StrictModel", "StructureError", "batched_neighbor_list", "load_checkpoint", "load_config",
    "neighbor_list", "save_checkpoint",
]
