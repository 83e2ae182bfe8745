"""``matsim train`` (generative dispatch) and ``matsim generate`` end to end: CIFs + metrics.json, resume, and
user errors as one line with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from matsim.cli.app import main
from test_cdvae import TINY, write_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in err, err


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generate")
    write_rows(path / "train.csv", 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATSIM_CACHE_DIR", str(path / "cache"))
        yield path


def train_data(workdir: Path, epochs: int = 2) -> dict:
    return {
        "run_dir": "run", "device": "cpu",
        "model": {"name": "cdvae", "hyperparameters": TINY},
        "data": {"train": "train.csv", "property": "heat_all", "split": {"valid": 6, "seed": 0}},
        "optimizer": {"lr": 0.003, "batch_size": 8},
        "training": {"max_epochs": epochs, "ema_decay": 0.9, "progress": False, "tensorboard": False},
    }


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    config = write_yaml(workdir / "train.yaml", train_data(workdir))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--set", "training.max_epochs=1"])
    assert exit_info.value.code in (0, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--resume"])  # continues to max_epochs = 2
    assert exit_info.value.code in (0, None)
    return workdir / "run"


def generate_data(**changes: object) -> dict:
    data = {"checkpoint": "run/best.pt", "num_samples": 5, "batch_size": 2, "seed": 3, "device": "cpu",
            "sampler": {"n_levels": 3, "steps_per_level": 2}, "score": {"reference": "train.csv"}}
    data.update(changes)
    return data


def test_train_dispatches_to_the_generative_loop_and_resumes(trained: Path) -> None:
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,lr,train_loss")  # epoch 1, then epoch 2 on resume
    assert (trained / "best.pt").is_file() and (trained / "split.json").is_file()


def test_generate_writes_cifs_and_metrics(workdir: Path, trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(workdir / "generate.yaml", generate_data())
    code, out, err = run_cli(["generate", str(config), "--output", str(workdir / "out")], capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "out" / "metrics.json").read_text())
    cifs = sorted((workdir / "out" / "structures").glob("*.cif"))
    assert metrics["n_requested"] == 5 and metrics["n_written"] + metrics["n_failed"] == 5
    assert len(cifs) == metrics["n_written"] and cifs[0].name == "000000.cif"
    sampling = metrics["sampling"]
    assert sampling["wall_time_s"] > 0 and sampling["structures_per_s"] > 0 and sampling["seed"] == 3
    assert sampling["settings"]["n_levels"] == 3 and sampling["settings"]["steps_per_level"] == 2
    scores = metrics["metrics"]
    assert scores["n"] == 5 and 0.0 <= scores["validity"] <= 1.0 and scores["novelty"] is not None
    assert scores["thresholds"]["min_interatomic_distance_A"] == 0.5 and "pymatgen" in scores["versions"]
    assert metrics["checkpoint"]["model"] == "CDVAE" and metrics["versions"]["torch"]
    # the same seed gives the same structures
    code, _, err = run_cli(["generate", str(config), "--output", str(workdir / "again"), "--set", "score=null"], capsys)
    assert code == 0, err
    again = sorted((workdir / "again" / "structures").glob("*.cif"))
    assert [p.read_text() for p in again] == [p.read_text() for p in cifs]
    # an output folder that already holds samples is refused
    code, out, err = run_cli(["generate", str(config), "--output", str(workdir / "out")], capsys)
    assert_one_line_error(code, out, err, "already holds generated samples")


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"num_sample": 3}, ["num_sample: unknown key", "allowed keys"]),
        ({"checkpoint": "run/missing.pt"}, ["missing.pt"]),
        ({"score": {"reference": "nowhere.csv"}}, ["nowhere.csv", "not found"]),
        ({"sampler": {"n_level": 3}}, ["sampler", "n_level: unknown key"]),
        ({"condition": {"temperature": 300}}, ["condition.temperature: unknown key"]),
        ({"condition": {"composition": "XeF2"}}, ["condition.composition: Xe"]),
    ],
    ids=["unknown-key", "missing-checkpoint", "missing-reference", "unknown-sampler-key", "unknown-condition",
         "foreign-element"],
)
def test_generate_user_errors(workdir: Path, trained: Path, capsys: pytest.CaptureFixture[str], changes: dict,
                              fragments: list[str]) -> None:
    config = write_yaml(workdir / "bad.yaml", generate_data(**changes))
    code, out, err = run_cli(["generate", str(config), "--output", str(workdir / "bad-out")], capsys)
    assert_one_line_error(code, out, err, *fragments)
    assert not (workdir / "bad-out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"data": {"train": "missing.csv"}}, ["missing.csv", "not found"]),
        ({"model": {"name": "cdvae", "hyperparameters": {"hiden": 8}}}, ["model.hyperparameters.hiden"]),
        ({"trainig": {}}, ["trainig: unknown key"]),
    ],
    ids=["missing-csv", "unknown-hyperparameter", "unknown-key"],
)
def test_train_user_errors(workdir: Path, capsys: pytest.CaptureFixture[str], changes: dict,
                           fragments: list[str]) -> None:
    data = train_data(workdir) | {"run_dir": "bad-run"} | changes
    config = write_yaml(workdir / "bad-train.yaml", data)
    code, out, err = run_cli(["train", str(config)], capsys)
    assert_one_line_error(code, out, err, *fragments)
