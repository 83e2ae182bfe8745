"""Models: potentials (``bamboo``, ``escaip``) and generative models (``cdvae``), created and loaded by name.

- :func:`create` builds a fresh model from hyperparameters;
- :func:`load_model` reads a checkpoint file or a shipped pretrained model by name (offline);
- :func:`save_model` writes a model with its hyperparameters and dataset statistics.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from matsim.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from matsim.core.errors import CheckpointError
from matsim.core.registry import Registry
from matsim.models import pretrained

__all__ = ["MODELS", "model_class", "create", "load_model", "save_model", "resolve_device"]

#: Registry of every model class by name.
MODELS: Registry[nn.Module] = Registry("model")


#: The module that registers each built-in model. A model's module is imported when its name is first asked for,
#: so training or running a potential never imports the generative stack (pymatgen).
_BUILTIN_MODULES = {
    "bamboo": "matsim.models.bamboo",
    "escaip": "matsim.models.escaip",
    "cdvae": "matsim.models.cdvae",
    "unimat": "matsim.models.unimat",
    "diffspectra": "matsim.models.diffspectra",
}


def _register_builtin_models(name: str | None = None) -> None:
    """Import the module registering built-in model ``name`` (all of them for None or an unknown name)."""
    modules = [_BUILTIN_MODULES[name]] if name in _BUILTIN_MODULES else list(_BUILTIN_MODULES.values())
    for module in modules:
        importlib.import_module(module)


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (a :class:`ConfigError` listing the known names otherwise)."""
    _register_builtin_models(name)
    return MODELS.get(name)


def create(name: str, **hyperparameters: Any) -> nn.Module:
    """A freshly initialised model ``name`` (e.g. ``"bamboo"``) built with ``hyperparameters``."""
    model = model_class(name)(**hyperparameters)
    model.hyperparameters = dict(hyperparameters)
    return model


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_model(model: nn.Module, path: str | Path, statistics: dict[str, Any] | None = None,
               metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (made by :func:`create`; its class registered itself on import) to a checkpoint file."""
    checkpoint = Checkpoint(
        model=MODELS.name_of(type(model)),
        hyperparameters=dict(getattr(model, "hyperparameters", {})),
        state_dict=model.state_dict(),
        statistics=statistics or {},
        metadata=metadata or {},
    )
    return save_checkpoint(checkpoint, path)


def load_model(name_or_path: str | Path, device: str | torch.device = "auto",
               dtype: torch.dtype | None = None) -> nn.Module:
    """A model from a checkpoint path or a shipped pretrained name, in eval mode on ``device``.

    Raises :class:`CheckpointError` when the file is missing, corrupt, or does not fit the model it names.
    """
    path = pretrained.path_of(str(name_or_path)) or Path(name_or_path)
    if not path.exists():
        shipped = ", ".join(pretrained.available()) or "none"
        raise CheckpointError(f"no checkpoint file or pretrained model named {str(name_or_path)!r} (shipped: {shipped})")
    checkpoint = load_checkpoint(path)
    try:
        model = create(checkpoint.model, **checkpoint.hyperparameters)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path}: hyperparameters do not fit model {checkpoint.model!r}: {exc}") from exc
    if dtype is not None:
        model = model.to(dtype=dtype)  # load float64 weights into float64, not through float32 parameters
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {checkpoint.model!r}: {first}") from exc
    model.statistics = checkpoint.statistics
    model.metadata = checkpoint.metadata
    return model.to(device=resolve_device(device), dtype=dtype).eval()
