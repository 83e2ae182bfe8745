"""Fine-tuning: a training run that starts from the weights of an existing checkpoint (``model.init_from``).

The checkpoint supplies the model's name, hyperparameters and weights; the config may repeat ``model.name`` and
``model.hyperparameters`` only where they agree with it, except the model's ``switchable_hyperparameters``, which
turn terms without weights on or off (bamboo's ``dispersion``: pre-train on labels that include dispersion with D3 in
the model, fine-tune on dispersion-free DFT without it). With ``model.refit_e0s`` the per-element reference
energies E0 are refitted as a correction to the loaded model: one pass in eval mode gives the residuals
E_label - E_model over the training split, and the least-squares δ_Z of Σ_frames (E_label - E_model - Σ_Z n_Z δ_Z)²
is added to the checkpoint's E0s. That is the least-squares fit of E0 to E_label - E_model,noE0; where the
compositions cannot tell elements apart (one molecule), the minimum-norm δ keeps the checkpoint's split of the
energy between elements. With isolated atoms, δ_Z = E_label(atom) - E_model(atom). The offset between two levels of
theory (GFN2-xTB → DFT: hundreds of eV) is absorbed without touching the learned weights: forces are unchanged at
step 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from matsim.core.checkpoint import Checkpoint, load_checkpoint
from matsim.core.errors import CheckpointError, ConfigError, MatsimError
from matsim.datasets.graphs import GraphDataset, file_digest
from matsim.models import create, model_class, pretrained
from matsim.models.forcefield import ForceField
from matsim.train.config import ModelSection
from matsim.train.evaluate import batches

__all__ = ["load_parent", "check_model_section", "fine_tuning_hyperparameters", "load_parent_weights", "switched_model",
           "weights_dtype", "check_species", "model_energies", "add_to_e0s"]


def load_parent(init_from: str) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint named by ``init_from`` (a path or a shipped pretrained name) and its provenance record
    ``{"path", "pretrained", "sha256", "model", "matsim_version"}`` for the new run's metadata."""
    shipped = pretrained.path_of(init_from)
    path = shipped or Path(init_from)
    if not path.is_file():
        names = ", ".join(pretrained.available()) or "none"
        raise CheckpointError(f"model.init_from: no checkpoint file or pretrained model {init_from!r} "
                              f"(shipped: {names})")
    checkpoint = load_checkpoint(path)
    provenance = {"path": str(path.resolve()), "pretrained": init_from if shipped else None,
                  "sha256": file_digest(path), "model": checkpoint.model,
                  "matsim_version": checkpoint.matsim_version}
    return checkpoint, provenance


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples → lists, int dict keys → strings) for comparing config and checkpoint."""
    return json.loads(json.dumps(value, default=str))


def check_model_section(section: ModelSection, checkpoint: Checkpoint) -> None:
    """A :class:`ConfigError` naming the first key of ``model.name``/``model.hyperparameters`` that disagrees with
    the checkpoint (a hyperparameter the checkpoint leaves out is compared with the constructor's default)."""
    source = section.init_from
    if section.name is not None and section.name != checkpoint.model:
        raise ConfigError(f"model.name: {section.name!r} conflicts with model.init_from {source} (a "
                          f"{checkpoint.model!r} model); leave model.name out when fine-tuning")
    defaults = {name: p.default for name, p in _constructor_defaults(checkpoint.model).items()}
    switchable = model_class(checkpoint.model).switchable_hyperparameters
    for key, value in section.hyperparameters.items():
        if key in switchable:
            continue
        if key in checkpoint.hyperparameters:
            parent = checkpoint.hyperparameters[key]
        elif key in defaults:
            parent = defaults[key]
        else:
            raise ConfigError(f"model.hyperparameters.{key}: not a hyperparameter of the {checkpoint.model!r} "
                              f"model in model.init_from {source}")
        if _plain(value) != _plain(parent):
            raise ConfigError(f"model.hyperparameters.{key}: {value!r} conflicts with {parent!r} of the checkpoint in "
                              f"model.init_from {source}; leave model.hyperparameters out when fine-tuning")


def fine_tuning_hyperparameters(section: ModelSection, checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's hyperparameters with the switchable ones the config sets (after :func:`check_model_section`)."""
    switchable = model_class(checkpoint.model).switchable_hyperparameters
    return {**checkpoint.hyperparameters,
            **{key: value for key, value in section.hyperparameters.items() if key in switchable}}


def load_parent_weights(model: nn.Module, checkpoint: Checkpoint, source: str) -> None:
    """Load ``checkpoint``'s state into ``model``, which may differ from it by switched terms without weights: every
    parameter must come from the checkpoint, and only buffers may be missing (a term switched on keeps its own) or
    left over (a term switched off). :class:`CheckpointError` otherwise (``RuntimeError`` from torch for a shape
    mismatch)."""
    missing, unexpected = model.load_state_dict(checkpoint.state_dict, strict=False)
    parameters = dict(model.named_parameters())
    parent_parameters = dict(create(checkpoint.model, **checkpoint.hyperparameters).named_parameters())
    wrong = [key for key in missing if key in parameters] + [key for key in unexpected if key in parent_parameters]
    if wrong:
        raise CheckpointError(f"model.init_from {source}: weights do not fit model {checkpoint.model!r}: "
                              f"{', '.join(sorted(wrong)[:5])}")


def weights_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The floating-point dtype of the checkpoint's weights (float32 when it has none)."""
    return next((v.dtype for v in checkpoint.state_dict.values() if v.is_floating_point()), torch.float32)


def switched_model(checkpoint: Checkpoint, source: str, **switches: Any) -> nn.Module:
    """The model of ``checkpoint`` (in its weights' dtype) with some of its ``switchable_hyperparameters`` changed,
    e.g. ``dispersion=None`` or ``dispersion="b3lyp"``, the weights loaded by :func:`load_parent_weights`.
    :class:`ConfigError` for a hyperparameter that is not switchable."""
    fixed = sorted(set(switches) - set(model_class(checkpoint.model).switchable_hyperparameters))
    if fixed:
        raise ConfigError(f"{source}: {', '.join(fixed)} cannot be switched on a {checkpoint.model!r} model")
    model = create(checkpoint.model, **{**checkpoint.hyperparameters, **switches}).to(weights_dtype(checkpoint))
    load_parent_weights(model, checkpoint, source)
    return model


def _constructor_defaults(name: str) -> dict[str, Any]:
    import inspect

    params = inspect.signature(model_class(name).__init__).parameters
    return {k: p for k, p in params.items() if p.default is not inspect.Parameter.empty}


def check_species(data_species: Iterable[int], model_species: Sequence[int], source: str) -> None:
    """A :class:`MatsimError` naming the elements of the data the checkpoint's model does not know."""
    missing = sorted(set(int(z) for z in data_species) - set(int(z) for z in model_species))
    if missing:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] for z in missing)
        known = ", ".join(chemical_symbols[int(z)] for z in sorted(model_species))
        raise MatsimError(f"model.init_from {source}: the training data contain {names}, which the checkpoint's "
                          f"model does not support (its species: {known}); fine-tuning cannot add elements")


@torch.no_grad()
def model_energies(model: nn.Module, dataset: GraphDataset, batch_size: int,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """(frames,) energy of ``model`` (eval mode, E0s included) on every frame of ``dataset``, eV (float64)."""
    was_training = model.training
    forcefield = ForceField(model.eval())
    try:
        out = [forcefield(graph.to(device), compute_forces=False)["energy"].to(torch.float64).cpu()
               for graph in batches(dataset, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def add_to_e0s(model: nn.Module, corrections: dict[int, float]) -> None:
    """Add ``corrections`` {Z: eV} to the model's E0 buffer (in float64; elements not given keep theirs)."""
    for z, value in corrections.items():
        model.atomic_energies[int(z)] = float(model.atomic_energies[int(z)].double()) + float(value)
