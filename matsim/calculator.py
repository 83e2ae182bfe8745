"""MatSimCalculator: any matsim potential as an ASE calculator.

Implements ``energy``, ``free_energy``, ``forces``, ``stress`` (periodic systems) and ``charges`` (models that
predict them), following ASE's Calculator contract: energies in eV, forces in eV/Å, stress in eV/Å³ as a Voigt
6-vector (xx, yy, zz, yz, xz, xy) with ASE's sign. The system's total charge is ``atoms.info["charge"]`` (default 0).
Neighbor lists are reused between MD steps with a skin (rebuilt only when an atom could have crossed the cutoff).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from matsim.core.errors import ConfigError
from matsim.core.graph import AtomGraph, total_charge
from matsim.core.neighbors import SkinNeighborList
from matsim.core.validation import check_atoms
from matsim.models import load_model, resolve_device
from matsim.models.base import Potential
from matsim.models.forcefield import ForceField

__all__ = ["MatSimCalculator"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MatSimCalculator(Calculator):
    """ASE calculator over a matsim potential.

    Args:
        model: a :class:`~matsim.models.base.Potential`, a checkpoint path, or a shipped pretrained name.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"float32"`` (default, fast) or ``"float64"`` (for checks of physics).
        skin: neighbor-list skin in Å; the list is rebuilt when an atom may have moved more than skin/2.
        check_structure: reject overlapping atoms and unsupported elements with a clear error on each new system.
        compile: run the model through ``torch.compile`` (see :class:`~matsim.models.forcefield.ForceField`): fused
            kernels on a GPU after a first call that compiles for about a minute; ``False`` (default) runs eagerly.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "charges"]

    def __init__(self, model: Potential | str | Path, device: str | torch.device = "auto", dtype: str = "float32",
                 skin: float = 1.0, check_structure: bool = True, compile: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not allowed (allowed values: {', '.join(_DTYPES)})")
        self.device = resolve_device(device)
        self.dtype = _DTYPES[dtype]
        potential = model if isinstance(model, torch.nn.Module) else load_model(model, device=self.device)
        self.potential = potential.to(device=self.device, dtype=self.dtype).eval()
        self.forcefield = ForceField(self.potential, compile=compile)
        self.neighbors = SkinNeighborList(self.potential.cutoff, skin)
        self.check_structure = check_structure
        if not self.potential.has_charges:
            self.implemented_properties = [p for p in self.implemented_properties if p != "charges"]

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        atoms = self.atoms
        if self.check_structure and ({"numbers", "pbc"} & set(system_changes) or self.neighbors.n_builds == 0):
            check_atoms(atoms, allowed_numbers=set(self.potential.species))
        graph = self._graph(atoms)
        want_stress = "stress" in (properties or []) and bool(atoms.pbc.all())
        out = self.forcefield(graph, compute_forces=True, compute_stress=want_stress)
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if want_stress:
            s = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        elif "stress" in (properties or []):
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
        if "charges" in out:
            self.results["charges"] = out["charges"].detach().cpu().double().numpy()

    def _graph(self, atoms: Atoms) -> AtomGraph:
        positions = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        cell = torch.as_tensor(np.asarray(atoms.cell.array), dtype=self.dtype, device=self.device)
        pbc = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool))
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        edge_index, shifts = self.neighbors.update(positions, cell, pbc, numbers)
        return AtomGraph(
            pos=positions,
            numbers=numbers,
            cell=cell.reshape(1, 3, 3),
            pbc=pbc.to(self.device).reshape(1, 3),
            charge=torch.tensor([total_charge(atoms)], dtype=self.dtype, device=self.device),
            molecule_id=torch.full((len(atoms),), -1, dtype=torch.long, device=self.device),
            edge_index=edge_index,
            shifts=shifts,
            num_nodes=len(atoms),
        )
