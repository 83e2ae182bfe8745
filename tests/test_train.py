"""Training: a tiny bamboo learns on a few ethanol frames, resume is exact, evaluate prints JSON, errors are clear."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import ase.io
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from matsim.cli.train import evaluate, train
from matsim.core.errors import ConfigError, MatsimError
from matsim.models import load_model
from matsim.train.config import load_train_config
from matsim.train.trainer import Trainer

DATA = Path("/work/shared/data")
ETHANOL = DATA / "rmd17_ethanol" / "train.xyz"

pytestmark = [pytest.mark.filterwarnings("ignore:the training compositions determine only"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if not ETHANOL.is_file():
        pytest.skip("shared ethanol data not available")
    root = tmp_path_factory.mktemp("train")
    ase.io.write(root / "ethanol24.xyz", ase.io.read(ETHANOL, ":24"), format="extxyz")
    return root


def set_dotted(config: dict, changes: dict) -> None:
    """Set ``config[a][b][c] = value`` for every ``"a.b.c": value`` of ``changes`` (in place)."""
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value


def write_config(root: Path, run: str, **changes) -> Path:
    config = {
        "run_dir": run,
        "seed": 1,
        "dtype": "float64",
        "device": "cpu",
        "model": {"name": "bamboo", "hyperparameters": {
            "cutoff": 4.0, "channels": 8, "num_layers": 1, "num_heads": 2, "num_radial": 6, "radial_hidden": 16,
            "charges": False}},
        "data": {"train": "ethanol24.xyz", "split": {"train": 16, "valid": 8, "seed": 0}, "e0s": "least_squares",
                 "cache_dir": "cache"},
        "loss": {"energy": 1.0, "forces": 100.0},
        "optimizer": {"lr": 0.02, "batch_size": 4},
        "schedule": {"type": "cosine", "warmup_epochs": 0.5},
        "training": {"max_epochs": 4, "ema_decay": 0.5, "clip_grad_norm": 10.0, "progress": False},
    }
    set_dotted(config, changes)
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def full_run(workdir: Path) -> Path:
    """Four uninterrupted epochs."""
    trainer = Trainer(load_train_config(write_config(workdir, "full")))
    trainer.fit()
    return workdir / "full"


def test_metrics_csv_keeps_validation_columns_first_seen_after_epoch_one(workdir: Path) -> None:
    Trainer(load_train_config(write_config(workdir, "sparse", **{"training.valid_every": 2,
                                                                  "training.max_epochs": 3}))).fit()
    rows = read_metrics(workdir / "sparse")
    assert [r["valid_loss"] != "" for r in rows] == [False, True, True]  # epoch 3: the last epoch validates
    assert float(rows[1]["valid_loss"]) > 0 and rows[0]["train_loss"] != ""


def test_tiny_model_trains_and_validation_error_falls(full_run: Path) -> None:
    rows = read_metrics(full_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    valid = [float(r["valid_loss"]) for r in rows]
    assert valid[-1] < valid[0]
    forces = [float(r["valid_forces_mae_meV_per_A"]) for r in rows]
    assert forces[-1] < forces[0]
    for name in ("best.pt", "last.pt", "resume.pt", "split.json", "config.yaml", "statistics.json", "errors.json"):
        assert (full_run / name).is_file(), name
    # statistics reached the model and the checkpoint
    model = load_model(full_run / "best.pt", device="cpu")
    stats = model.statistics
    assert set(stats["filled_hyperparameters"]) == {"species", "atomic_energies", "avg_num_neighbors", "energy_scale"}
    assert model.hyperparameters["energy_scale"] == pytest.approx(stats["energy_scale"]) and stats["energy_scale"] > 0.1
    assert model.hyperparameters["avg_num_neighbors"] == pytest.approx(stats["avg_num_neighbors"])
    assert model.hyperparameters["species"] == [1, 6, 8]
    assert model.metadata["config"]["model"]["name"] == "bamboo" and model.metadata["epoch"] >= 1
    state = torch.load(full_run / "resume.pt", weights_only=True)
    assert state["epoch"] == 4 and "optimizer" in state and "rng" in state
    errors = json.loads((full_run / "errors.json").read_text())
    assert errors["sets"]["validation"]["n_structures"] == 8


def test_resume_reproduces_the_uninterrupted_run_exactly(workdir: Path, full_run: Path) -> None:
    config = load_train_config(write_config(workdir, "parts"))
    Trainer(config).fit(stop_after_epochs=2)  # "killed" after epoch 2
    assert len(read_metrics(workdir / "parts")) == 2
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(config)
    Trainer(config, resume=True).fit()
    assert read_metrics(workdir / "parts") == read_metrics(full_run)  # every loss and error, bit for bit
    a = torch.load(full_run / "resume.pt", weights_only=True)
    b = torch.load(workdir / "parts" / "resume.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"]["module"].items():
        assert torch.equal(value, b["ema"]["module"][key]), key
    # changing the model or the loss of a run on resume is refused with the keys named
    changed = load_train_config(write_config(workdir, "parts", **{"loss.forces": 10.0}))
    with pytest.raises(ConfigError, match="loss.forces"):
        Trainer(changed, resume=True)


def test_resume_accepts_a_run_saved_before_a_setting_existed(workdir: Path) -> None:
    """A run started by a matsim without ``data.keys.missing_targets`` (the key is absent from its saved config)
    resumes under a matsim that has it, at its default."""
    config = load_train_config(write_config(workdir, "older", **{"training.max_epochs": 2}))
    Trainer(config).fit(stop_after_epochs=1)
    resume_path = workdir / "older" / "resume.pt"
    state = torch.load(resume_path, weights_only=True)
    del state["config"]["data"]["keys"]["missing_targets"]
    torch.save(state, resume_path)
    Trainer(config, resume=True).fit()
    assert len(read_metrics(workdir / "older")) == 2


def test_evaluate_json(workdir: Path, full_run: Path) -> None:
    app = typer.Typer()
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    result = CliRunner().invoke(app, ["evaluate", str(full_run / "best.pt"), str(workdir / "ethanol24.xyz"), "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "forces_mae_meV_per_A", "forces_rmse_meV_per_A",
                "n_structures"):
        assert key in data
    assert data["n_structures"] == 24 and len(data["per_structure"]) == 24
    assert data["forces_rmse_meV_per_A"] >= data["forces_mae_meV_per_A"] > 0
    assert {"frame", "energy_error_meV", "energy_error_meV_per_atom"} <= set(data["per_structure"][0])
    table = CliRunner().invoke(app, ["evaluate", str(full_run / "best.pt"), str(workdir / "ethanol24.xyz"),
                                     "--device", "cpu"])
    assert table.exit_code == 0 and "meV/atom" in table.stdout
    missing = CliRunner().invoke(app, ["evaluate", str(full_run / "best.pt"), str(workdir / "ethanol24.xyz"),
                                       "--energy-key", "energy_xtb", "--device", "cpu"])
    assert isinstance(missing.exception, MatsimError) and "energy_xtb" in str(missing.exception)


def test_bad_config_errors_name_the_key(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.max_epoch: unknown key \(allowed keys: .*max_epochs"):
        load_train_config(write_config(workdir, "bad1"), ["training.max_epoch=3"])
    with pytest.raises(ConfigError, match=r"loss\.type: 'l1' is not allowed"):
        load_train_config(write_config(workdir, "bad2"), ["loss.type=l1"])
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        load_train_config(write_config(workdir, "bad3"), ["optimizer.lr=-1"])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        Trainer(load_train_config(write_config(workdir, "bad4", **{"model.name": "nope"})))
    with pytest.raises(ConfigError, match="do not fit model 'bamboo'"):
        Trainer(load_train_config(write_config(workdir, "bad5", **{"model.hyperparameters.width": 3})))


def test_missing_key_in_training_data_is_clear(workdir: Path) -> None:
    config = load_train_config(write_config(workdir, "missing", **{"data.keys": {"forces": "forces_xtb"}}))
    with pytest.raises(MatsimError, match=r"ethanol24\.xyz: frame 0 has no forces under key 'forces_xtb'"):
        Trainer(config)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_path_with_one_process_matches_the_plain_run(workdir: Path, full_run: Path, monkeypatch) -> None:
    """Under torchrun's environment the trainer joins a (Gloo) process group, wraps the step in DDP and shards with
    a DistributedSampler; with one process that reproduces the plain run exactly."""
    import torch.distributed as dist

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    trainer = Trainer(load_train_config(write_config(workdir, "ddp1")))
    try:
        assert dist.is_initialized() and trainer.dist.enabled
        assert type(trainer.train_step).__name__ == "DistributedDataParallel"
        trainer.fit()
    finally:
        trainer.close()
    assert not dist.is_initialized()
    assert read_metrics(workdir / "ddp1") == read_metrics(full_run)


def _torchrun_two_processes(workdir: Path, config: Path, attempt: int, watchdog_s: int):
    """One ``torchrun --nproc_per_node=2`` run of ``config``; a rank still alive after ``watchdog_s`` seconds dumps
    its Python stacks to ``hang-<attempt>-<rank>.txt`` and exits (so a hang is reported, with where it hung)."""
    import os
    import subprocess
    import sys

    script = workdir / f"ddp2-{attempt}.py"
    script.write_text(
        "import faulthandler, os\n"
        f"stacks = open(os.path.join({str(workdir)!r}, 'hang-{attempt}-' + os.environ['RANK'] + '.txt'), 'w')\n"
        f"faulthandler.dump_traceback_later({watchdog_s}, exit=True, file=stacks)\n"
        "from matsim.train.trainer import train_from_file\n"
        f"train_from_file({str(config)!r})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", str(script)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=3 * watchdog_s,
    )


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(workdir: Path) -> None:
    """Two Gloo processes: training completes, validation is summed over ranks, only rank 0 writes.

    The job takes about 10 s on 2 cores. It hung once in CI (the whole attempt ran out its time); a hung attempt now
    leaves its stacks, which are reported as a warning, and the job is run once more from scratch."""
    import shutil
    import warnings

    config = write_config(workdir, "ddp2", **{"training.max_epochs": 2})
    for attempt in (1, 2):
        done = _torchrun_two_processes(workdir, config, attempt, watchdog_s=90)
        hung = sorted(p for p in workdir.glob(f"hang-{attempt}-*.txt") if p.read_text().strip())
        if not hung or attempt == 2:
            break
        warnings.warn("torchrun attempt 1 hung; stacks:\n" + "\n".join(p.read_text() for p in hung))
        shutil.rmtree(workdir / "ddp2")
    assert done.returncode == 0, done.stderr[-2000:] + "".join(p.read_text() for p in hung)
    rows = read_metrics(workdir / "ddp2")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[-1]["step"]) == 4  # 16 frames / 2 ranks / 4 a batch, 2 epochs
    errors = json.loads((workdir / "ddp2" / "errors.json").read_text())
    assert errors["sets"]["validation"]["n_structures"] == 8
    assert done.stdout.count("matsim train bamboo") == 1  # rank 1 prints nothing


def test_evaluate_without_dispersion_compares_with_dispersion_free_labels(tmp_path: Path) -> None:
    from ase.build import molecule

    import matsim.models
    from matsim.calculator import MatSimCalculator
    from matsim.train.evaluate import evaluate_checkpoint

    torch.manual_seed(0)
    plain = matsim.models.create("bamboo", cutoff=4.0, species=[1, 6, 8], channels=8, num_layers=1, num_heads=2,
                                 charges=False)
    with_d3 = matsim.models.create("bamboo", cutoff=4.0, species=[1, 6, 8], channels=8, num_layers=1, num_heads=2,
                                   charges=False, dispersion="b3lyp")
    with_d3.load_state_dict(plain.state_dict(), strict=False)
    frames = []
    for k in range(3):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=k)
        atoms.calc = MatSimCalculator(plain, device="cpu", dtype="float64")
        atoms.get_forces()
        frames.append(atoms)
    ase.io.write(tmp_path / "labels.extxyz", frames)
    checkpoint = matsim.models.save_model(with_d3, tmp_path / "d3.pt")
    off = evaluate_checkpoint(checkpoint, tmp_path / "labels.extxyz", device="cpu", dispersion=False)
    on = evaluate_checkpoint(checkpoint, tmp_path / "labels.extxyz", device="cpu")
    assert off["forces_mae_meV_per_A"] < 1e-2 and off["energy_mae_meV_per_atom"] < 1e-2
    assert on["energy_mae_meV_per_atom"] > 1.0
