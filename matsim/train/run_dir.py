"""The run folder of a training loop: its resume file and its data split, shared by the potentials' trainer and the
generative trainer.

- :func:`read_resume_state` opens ``run_dir/resume.pt`` for ``--resume`` (or refuses to start over a run that
  has one), and refuses a config whose frozen sections changed;
- :func:`run_split` gives the run's train/validation split: the saved one on resume, else explicit indices or a
  seeded random split of the config's ``data.split`` section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from pydantic import BaseModel, ValidationError

from matsim.core.errors import CheckpointError, ConfigError, MatsimError
from matsim.datasets.splits import Split, explicit_split, load_split, random_split

__all__ = ["RESUME_FILE", "SPLIT_FILE", "read_resume_state", "read_run_record", "changed_keys", "run_split"]

RESUME_FILE = "resume.pt"
SPLIT_FILE = "split.json"


def read_resume_state(run_dir: Path, resume: bool, config: dict[str, Any], frozen: Sequence[str], file_format: str,
                      may_change: str, schema: type[BaseModel] | None = None) -> dict[str, Any] | None:
    """The saved state of the run in ``run_dir`` when ``resume`` (None otherwise).

    ``schema``: the config's model class. The saved config is read through it before the comparison, so a setting
    that a later matsim added (absent from the saved config, at its default now) does not block resuming a run
    that an earlier version started.

    Errors (:class:`CheckpointError` / :class:`ConfigError`): nothing to resume; a corrupt file or one of another
    ``file_format``; a ``config`` (plain dict) that differs from the run's in a ``frozen`` section (``may_change``
    names what may, for the message); starting afresh over a run that has a resume file.
    """
    state = _read_saved(run_dir / RESUME_FILE, resume, file_format, "a run",
                        lambda path: torch.load(path, map_location="cpu", weights_only=True))
    if state is None:
        return None
    saved = state["config"]
    if schema is not None:
        try:
            saved = schema.model_validate(saved).model_dump(mode="json")
        except ValidationError:  # a setting since removed or renamed: compare as saved (the message names it)
            pass
    changed = changed_keys(saved, config, frozen)
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: the config differs from the run's in {', '.join(changed)} "
                          f"(only {may_change} may change on --resume)")
    return state


def read_run_record(path: Path, resume: bool, file_format: str, kind: str) -> dict[str, Any] | None:
    """The JSON record of a multi-stage run (``matsim train align`` / ``distill``) at ``path`` when ``resume``; None
    when starting afresh. ``kind`` names the run in messages (e.g. ``"an alignment"``).

    Errors: starting afresh over an existing record (:class:`ConfigError`); nothing to resume, an unreadable file or
    one whose ``format`` is not ``file_format`` (:class:`CheckpointError`).
    """
    return _read_saved(path, resume, file_format, kind, lambda p: json.loads(p.read_text()))


def _read_saved(path: Path, resume: bool, file_format: str, kind: str, load: Callable[[Path], Any]) -> Any:
    """The dict that ``load`` reads from ``path`` when ``resume`` (None when starting afresh), with the checks
    that both kinds of saved run share (see :func:`read_run_record`)."""
    if not resume:
        if path.exists():
            raise ConfigError(f"run_dir {path.parent} already holds {kind} ({path.name}); continue it with --resume or "
                              "choose another run_dir")
        return None
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        saved = load(path)
    except Exception as exc:  # torch and json raise many types for a damaged file
        raise CheckpointError(f"cannot read {path}: the file is corrupt ({exc})") from exc
    if not isinstance(saved, dict) or saved.get("format") != file_format:
        raise CheckpointError(f"{path} is not a {file_format} file")
    return saved


def changed_keys(saved: dict, current: dict, frozen: Sequence[str]) -> list[str]:
    """Dotted keys under the ``frozen`` sections whose values differ between two plain configs."""
    a, b = _flatten(saved), _flatten(current)
    return [key for key in sorted(set(a) | set(b))
            if any(key == f or key.startswith(f + ".") for f in frozen) and a.get(key) != b.get(key)]


def run_split(num_frames: int, split_section: Any, run_dir: Path, resuming: bool, source: Path) -> Split:
    """The train/validation split of ``num_frames`` items of ``source``: the run's saved split when ``resuming``
    (checked against ``num_frames``), else ``split_section``'s explicit indices or its seeded random split."""
    if resuming:
        split = load_split(run_dir / SPLIT_FILE)
        if split.num_frames != num_frames:
            raise MatsimError(f"{source} has {num_frames} entries but the run's split was made for {split.num_frames}")
        return split
    if split_section.train_indices is not None:
        return explicit_split(num_frames, split_section.train_indices, split_section.valid_indices or ())
    return random_split(num_frames, split_section.valid, split_section.train, split_section.seed)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}
