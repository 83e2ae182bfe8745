"""Checkpoint I/O: round trip, atomic writes, and clear errors for missing, corrupt and incompatible files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matsim.core.checkpoint import FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from matsim.core.errors import CheckpointError
from matsim.core.registry import Registry
from matsim.core.errors import ConfigError


def make_checkpoint() -> Checkpoint:
    model = torch.nn.Linear(3, 2).double()
    return Checkpoint(
        model="linear",
        hyperparameters={"in_features": 3, "out_features": 2, "layers": [1, 2]},
        state_dict=model.state_dict(),
        statistics={"e0": {"1": -13.6}, "force_rms": 0.5},
        metadata={"note": "test"},
    )


def test_round_trip_is_identical(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "sub" / "model.pt")
    loaded = load_checkpoint(path)
    assert loaded.model == "linear" and loaded.hyperparameters == ckpt.hyperparameters
    assert loaded.statistics == ckpt.statistics and loaded.metadata == ckpt.metadata
    assert loaded.units["energy"] == "eV"
    for key, value in ckpt.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path: Path) -> None:
    path = save_checkpoint(make_checkpoint(), tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "text.pt")


def test_code_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save({"format": FORMAT, "object": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_not_a_matsim_checkpoint_and_newer_format(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a matsim checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    payload = make_checkpoint().to_dict()
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer than this matsim"):
        load_checkpoint(tmp_path / "future.pt")
    del payload["state_dict"]
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing state_dict"):
        load_checkpoint(tmp_path / "partial.pt")


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(make_checkpoint(), tmp_path / "model.pt")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_checkpoint(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_registry_names_and_unknown_name() -> None:
    registry: Registry[object] = Registry("model")

    @registry.register("thing")
    class Thing:
        pass

    assert registry.get("thing") is Thing and registry.name_of(Thing) == "thing" and "thing" in registry
    with pytest.raises(ConfigError, match="unknown model 'other' \\(known: thing\\)"):
        registry.get("other")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("thing")(type("Other", (), {}))
