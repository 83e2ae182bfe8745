"""Config loading: YAML syntax errors, unknown keys and bad values are reported with the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from matsim.core.config import StrictModel, apply_overrides, load_config
from matsim.core.errors import ConfigError


class Stage(StrictModel):
    kind: Literal["minimise", "npt", "nvt"]
    steps: int = Field(ge=0)
    temperature: float = Field(300.0, gt=0)


class RunConfig(StrictModel):
    name: str
    stages: list[Stage]
    seed: int = 0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_valid_config_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nstages:\n  - {kind: nvt, steps: 10}\n")
    cfg = load_config(RunConfig, path, overrides=["stages.0.steps=25", "seed=4"])
    assert cfg.stages[0].steps == 25 and cfg.seed == 4 and cfg.stages[0].temperature == 300.0


def test_unknown_key_names_its_path_and_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nstages:\n  - {kind: nvt, steps: 10, temprature: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    message = str(err.value)
    assert "stages.0.temprature: unknown key" in message
    assert "allowed keys: kind, steps, temperature" in message
    assert str(path) in message


def test_bad_value_names_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nstages:\n  - {kind: npx, steps: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    message = str(err.value)
    assert "stages.0.kind: 'npx' is not allowed (allowed values: 'minimise', 'npt' or 'nvt')" in message
    assert "stages.0.steps: Input should be greater than or equal to 0" in message
    assert message.count("\n") == 0


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nstages: [\n  kind: nvt\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line \d+, column \d+\)"):
        load_config(RunConfig, path)


def test_missing_file_and_missing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RunConfig, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="name: required key is missing"):
        load_config(RunConfig, write(tmp_path, "stages: []\n"))


def test_bad_overrides() -> None:
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["seed"])
    with pytest.raises(ConfigError, match="index 3 is out of range"):
        apply_overrides({"stages": [{}]}, ["stages.3.steps=1"])
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
