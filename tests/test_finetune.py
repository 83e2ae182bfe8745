"""Fine-tuning (``model.init_from``): a tiny bamboo trained on ethanol is fine-tuned on the same frames relabelled at
a "different level of theory" (energies shifted by a constant per element). Refitted E0s absorb the shift before the
first gradient step, the weights (forces) are the parent's, errors are clear, the run records its parent."""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from matsim.core.errors import ConfigError, MatsimError
from matsim.core.graph import AtomGraph
from matsim.datasets.atoms import DataKeys, frame_targets, read_frames
from matsim.models import load_model, pretrained
from matsim.models.forcefield import ForceField
from matsim.train.config import load_train_config
from matsim.datasets.graphs import file_digest
from matsim.train.trainer import Trainer
from test_train import ETHANOL, read_metrics, write_config

pytestmark = [pytest.mark.filterwarnings("ignore:the training compositions determine only"),
              pytest.mark.usefixtures("one_thread")]

#: The "new level of theory": eV added per atom of each element (H, C; O unchanged).
SHIFT = {1: 100.0, 6: -37.0}
FINE_TUNE_KEYS = {"energy": "E_new", "forces": "F_new"}


def write_relabelled(path: Path, frames: list[Atoms], shift: dict[int, float],
                     numbers: dict[int, int] | None = None) -> None:
    """``frames`` with energy + Σ shift[Z] under ``E_new`` and the same forces under ``F_new`` (elements renamed by
    ``numbers``), written as extended XYZ."""
    out = []
    for atoms in frames:
        targets = frame_targets(atoms, DataKeys(), ("energy", "forces"))
        z = np.array([(numbers or {}).get(int(n), int(n)) for n in atoms.numbers])
        new = Atoms(numbers=z, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        new.info["E_new"] = float(targets["energy"]) + sum(shift.get(int(n), 0.0) for n in atoms.numbers)
        new.arrays["F_new"] = targets["forces"]
        out.append(new)
    ase.io.write(path, out, format="extxyz")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Parent run (``parent/best.pt``, 2 epochs on 16 ethanol frames) and relabelled copies of its 24 frames."""
    if not ETHANOL.is_file():
        pytest.skip("shared ethanol data not available")
    root = tmp_path_factory.mktemp("finetune")
    frames = read_frames(ETHANOL)[:24]
    ase.io.write(root / "ethanol24.xyz", frames, format="extxyz")
    write_relabelled(root / "same.xyz", frames, {})
    write_relabelled(root / "shifted.xyz", frames, SHIFT)
    write_relabelled(root / "with_nitrogen.xyz", frames, {}, numbers={8: 7})
    Trainer(load_train_config(write_config(root, "parent", **{"training.max_epochs": 2}))).fit()
    return root


def fine_tune_config(root: Path, run: str, train: str = "shifted.xyz", **changes) -> Path:
    """A fine-tuning config of the parent on ``train`` (same split and optimiser as the parent's)."""
    model = {"init_from": "parent/best.pt", **changes.pop("model", {})}
    return write_config(root, run, **{"model": model, "data.train": train, "data.keys": FINE_TUNE_KEYS,
                                      "training.max_epochs": 2, **changes})


def composition_e0(model: torch.nn.Module) -> float:
    """Σ E0 over one ethanol molecule (C2H6O), eV."""
    e0 = model.atomic_energies
    return float(2 * e0[6] + 6 * e0[1] + e0[8])


def test_refit_e0s_absorbs_a_per_element_shift_and_keeps_the_weights(workdir: Path) -> None:
    parent = load_model(workdir / "parent" / "best.pt", device="cpu", dtype=torch.float64)
    same = Trainer(load_train_config(fine_tune_config(workdir, "ft_same", train="same.xyz")))
    # name and hyperparameters that agree with the checkpoint are accepted
    shifted = Trainer(load_train_config(fine_tune_config(
        workdir, "ft_shift", model={"name": "bamboo", "hyperparameters": {"cutoff": 4.0, "channels": 8}})))
    before = {"same": same._validate(), "shifted": shifted._validate()}  # step 0: no gradient step yet
    # least squares is linear: the shift of the labels moves the E0s of the composition by exactly the shift
    assert composition_e0(shifted.model) - composition_e0(same.model) == pytest.approx(2 * -37.0 + 6 * 100.0, abs=1e-6)
    assert before["shifted"]["energy_mae_meV_per_atom"] == pytest.approx(before["same"]["energy_mae_meV_per_atom"],
                                                                         abs=1e-6)
    # ... and the error is the parent's on the unshifted labels (the shift itself is 58 eV/atom)
    parent_metrics = parent.metadata["metrics"]  # the parent's validation of the same 8 frames
    assert before["shifted"]["energy_mae_meV_per_atom"] < 1.5 * parent_metrics["valid_energy_mae_meV_per_atom"]
    assert before["shifted"]["forces_mae_meV_per_A"] == pytest.approx(parent_metrics["valid_forces_mae_meV_per_A"],
                                                                      rel=1e-9)
    # the learned weights are the parent's: forces at step 0 are identical
    graph = shifted.valid_set.batch(range(len(shifted.valid_set)))
    expected = ForceField(parent)(graph)["forces"]
    for model in (shifted.model, shifted.ema.module):
        assert torch.allclose(ForceField(model.eval())(graph)["forces"], expected, rtol=0, atol=1e-12)
    for key, value in parent.state_dict().items():
        if key != "atomic_energies":
            assert torch.equal(shifted.model.state_dict()[key], value), key
    stats = shifted.statistics
    assert stats["e0s_source"].startswith("least_squares") and stats["num_structures"] == 16
    assert shifted.hyperparameters["atomic_energies"] == stats["atomic_energies"]
    assert shifted.step == 0 and shifted.ema.num_updates == 0  # optimiser, schedule and EMA start fresh


def test_fine_tuning_run_records_its_parent_and_resumes_without_it(workdir: Path) -> None:
    shutil.copy(workdir / "parent" / "best.pt", workdir / "parent_copy.pt")
    digest = file_digest(workdir / "parent_copy.pt")
    config = load_train_config(fine_tune_config(workdir, "ft_resume", model={"init_from": "parent_copy.pt"}))
    assert config.model.init_from == str(workdir / "parent_copy.pt")  # resolved against the YAML file's folder
    Trainer(config).fit(stop_after_epochs=1)
    (workdir / "parent_copy.pt").unlink()  # --resume reads resume.pt, not init_from, which may name another path now
    moved = load_train_config(fine_tune_config(workdir, "ft_resume", model={"init_from": "elsewhere/parent_copy.pt"}))
    Trainer(moved, resume=True).fit()
    assert [int(r["epoch"]) for r in read_metrics(workdir / "ft_resume")] == [1, 2]
    model = load_model(workdir / "ft_resume" / "best.pt", device="cpu")
    record = model.metadata["init_from"]
    assert record["path"] == str(workdir / "parent_copy.pt") and record["sha256"] == digest
    assert record["model"] == "bamboo" and record["pretrained"] is None
    assert model.statistics["init_from"] == record
    assert model.hyperparameters["channels"] == 8 and model.species == [1, 6, 8]


def test_refit_e0s_false_keeps_the_checkpoint_e0s(workdir: Path) -> None:
    parent = load_model(workdir / "parent" / "best.pt", device="cpu", dtype=torch.float64)
    trainer = Trainer(load_train_config(fine_tune_config(workdir, "ft_keep", model={"refit_e0s": False})))
    assert torch.equal(trainer.model.atomic_energies, parent.atomic_energies)
    assert trainer.statistics["e0s_source"] == "init_from (kept)"
    assert trainer._validate()["energy_mae_meV_per_atom"] > 50_000  # the 58 eV/atom shift is left unexplained


def test_refit_to_isolated_atoms(workdir: Path) -> None:
    """bamboo's learned energy of a lone atom is 0, so E0s refitted to isolated atoms are their energies."""
    isolated = ETHANOL.parent / "isolated_atoms.xyz"
    trainer = Trainer(load_train_config(fine_tune_config(
        workdir, "ft_iso", train="ethanol24.xyz", **{"data.e0s": "isolated_atoms", "data.isolated_atoms": str(isolated),
                                                "data.keys": {"energy": "energy", "forces": "forces"}})))
    energies = {int(a.numbers[0]): float(frame_targets(a, DataKeys(), ("energy",))["energy"])
                for a in read_frames(isolated)}
    for z in (1, 6, 8):
        assert float(trainer.model.atomic_energies[z]) == pytest.approx(energies[z], abs=1e-9)


def test_unknown_element_is_a_clear_error(workdir: Path) -> None:
    config = load_train_config(fine_tune_config(workdir, "ft_nitrogen", train="with_nitrogen.xyz"))
    with pytest.raises(MatsimError, match=r"the training data contain N, which the checkpoint's model does not "
                                          r"support \(its species: H, C, O\)"):
        Trainer(config)


def test_conflicts_with_the_checkpoint_are_config_errors(workdir: Path) -> None:
    cases = {"model.hyperparameters.channels": {"hyperparameters": {"channels": 16}},
             "model.hyperparameters.width": {"hyperparameters": {"width": 3}},
             "model.name": {"name": "escaip"}}
    for key, model in cases.items():
        config = load_train_config(fine_tune_config(workdir, "ft_conflict", model=model))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Trainer(config)
    with pytest.raises(ConfigError, match="model.name .* or model.init_from"):
        load_train_config(write_config(workdir, "ft_nothing", model={"hyperparameters": {}}))
    with pytest.raises(MatsimError, match="no checkpoint file or pretrained model"):
        Trainer(load_train_config(fine_tune_config(workdir, "ft_missing", model={"init_from": "nope.pt"})))


def test_init_from_a_pretrained_name(workdir: Path, tmp_path: Path, monkeypatch) -> None:
    shutil.copy(workdir / "parent" / "best.pt", tmp_path / "tiny-ethanol.pt")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    config = load_train_config(fine_tune_config(workdir, "ft_pretrained", model={"init_from": "tiny-ethanol"}))
    assert config.model.init_from == "tiny-ethanol"  # a name, not a path
    trainer = Trainer(config)
    assert trainer.init_from["pretrained"] == "tiny-ethanol"
    assert trainer.init_from["sha256"] == file_digest(tmp_path / "tiny-ethanol.pt")



def test_dispersion_can_be_switched_on_when_fine_tuning(workdir: Path) -> None:
    """D3 has no weights: ``model.hyperparameters.dispersion`` may differ from the checkpoint's; the run's model is
    the parent's weights plus exactly the D3 energy."""
    config = load_train_config(fine_tune_config(workdir, "ft_d3", train="same.xyz",
                                                model={"hyperparameters": {"dispersion": "b3lyp"}, "refit_e0s": False}))
    trainer = Trainer(config)
    assert trainer.hyperparameters["dispersion"] == "b3lyp"
    parent = load_model(workdir / "parent" / "best.pt", device="cpu", dtype=torch.float64)
    child = trainer.model.to(torch.float64).eval()
    child_weights = dict(child.named_parameters())
    assert child_weights.keys() == dict(parent.named_parameters()).keys()
    assert all(torch.equal(child_weights[name], weight) for name, weight in parent.named_parameters())
    graph = AtomGraph.build(read_frames(workdir / "ethanol24.xyz")[:3], cutoff=parent.cutoff, dtype=torch.float64)
    before = ForceField(parent)(graph, compute_forces=False)
    after = ForceField(child)(graph, compute_forces=False)
    assert "dispersion" not in before["terms"]
    assert (after["terms"]["dispersion"] < -1e-3).all()  # D3 binds
    assert torch.allclose(after["energy"], before["energy"] + after["terms"]["dispersion"], atol=1e-10)


def test_switched_model_round_trips_dispersion_and_refuses_weighted_hyperparameters(workdir: Path) -> None:
    from matsim.core.checkpoint import load_checkpoint
    from matsim.models import save_model
    from matsim.train.finetune import switched_model

    parent = load_checkpoint(workdir / "parent" / "best.pt")
    with_d3 = switched_model(parent, "parent", dispersion="b3lyp")
    assert "dispersion" in with_d3.physical_terms
    save_model(with_d3, workdir / "with_d3.pt", parent.statistics)
    back = switched_model(load_checkpoint(workdir / "with_d3.pt"), "with_d3", dispersion=None)
    assert "dispersion" not in back.physical_terms
    assert back.state_dict().keys() == parent.state_dict.keys()
    assert all(torch.equal(back.state_dict()[key], value) for key, value in parent.state_dict.items())
    with_zbl = switched_model(parent, "parent", repulsion=True)  # ZBL has no weights either
    assert "repulsion" in with_zbl.physical_terms
    assert all(torch.equal(with_zbl.state_dict()[key], value) for key, value in parent.state_dict.items())
    with pytest.raises(ConfigError, match="channels cannot be switched"):
        switched_model(parent, "parent", channels=16)
