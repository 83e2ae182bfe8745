"""YAML configuration: a strict pydantic base model, loading with clear errors, and ``--set key.path=value`` overrides.

Every config class derives from :class:`StrictModel`, which rejects unknown keys. :func:`load_config` turns YAML
syntax errors and validation errors into one :class:`~matsim.core.errors.ConfigError` whose message names the file,
the key path (``stages.1.temperature``) and, where there is a closed set, the allowed keys or values.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from matsim.core.errors import ConfigError

__all__ = ["StrictModel", "load_config", "validate_config", "read_yaml", "apply_overrides", "format_validation_error"]

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every matsim config: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _check_device(value: str) -> str:
    if value != "auto" and not (value == "cpu" or value.startswith("cuda")):
        raise ValueError("device must be auto, cpu, cuda or cuda:N")
    return value


#: A config's ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
DeviceName = Annotated[str, AfterValidator(_check_device)]


def resolve_path(path: Path | None, base: Path) -> Path | None:
    """``path`` made absolute against ``base`` (a config file's folder); None stays None."""
    return None if path is None else (path if path.is_absolute() else (base / path).resolve())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise :class:`ConfigError` for a missing file, bad syntax or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a nested mapping (values parsed as YAML; list items by index).

    Example: ``apply_overrides(cfg, ["stages.0.steps=100", "system.seed=3"])``. Returns ``data`` (modified in place).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key_path, raw_value = item.split("=", 1)
        keys = [k for k in key_path.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key path")
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, ".".join(keys[: depth + 1]), create=True)
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key_path)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(keys[:-1])} is not a mapping or list")
    return data


def _list_index(node: list, key: str, path: str) -> int:
    try:
        index = int(key)
    except ValueError:
        raise ConfigError(f"override path {path}: {key!r} must be a list index") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"override path {path}: index {index} is out of range (list has {len(node)} items)")
    return index


def _child(node: Any, key: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, path)]
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            if not create:
                raise ConfigError(f"no key {path}")
            node[key] = {}
        return node[key]
    raise ConfigError(f"override path {path}: parent is not a mapping or list")


def validate_config(model: type[ModelT], data: dict[str, Any], source: str = "config") -> ModelT:
    """Validate ``data`` against ``model``; a failure raises :class:`ConfigError` naming ``source`` and key paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from exc


def load_config(model: type[ModelT], path: str | Path, overrides: Iterable[str] = ()) -> ModelT:
    """Read YAML at ``path``, apply ``key.path=value`` overrides, validate against ``model``."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate_config(model, data, source=str(path))


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str = "config") -> str:
    """One message for all problems of ``exc``: ``source: key.path: what is wrong (allowed: ...)``; one line each."""
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        path = ".".join(str(part) for part in loc) or "<top level>"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = f" (allowed keys: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{path}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{path}: required key is missing")
        elif kind in ("literal_error", "enum"):
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(f"{path}: {err.get('input')!r} is not allowed (allowed values: {expected})")
        else:
            lines.append(f"{path}: {err.get('msg', 'invalid value')} (got {err.get('input')!r})")
    head = f"{source}: " if len(lines) == 1 else f"{source}: {len(lines)} problems: "
    return head + "; ".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model found by following ``loc``; [] where it cannot be resolved."""
    current: Any = model
    for part in loc:
        current = _resolve_model(current)
        if current is None:
            return []
        if isinstance(part, int) or part not in current.model_fields:
            continue
        current = current.model_fields[part].annotation
    current = _resolve_model(current)
    if current is None:
        return []
    return sorted(info.alias or name for name, info in current.model_fields.items())


def _resolve_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (Optional[M], list[M], dict[str, M]); None if there is none or several."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = [m for arg in typing.get_args(annotation) if (m := _resolve_model(arg)) is not None]
    return found[0] if len(found) == 1 else None
