"""The fixed-shape training step of ``training.cuda_graph``: all-pairs edges and dropped partial batches train the
same model as the ordinary step (on CPU, eagerly; on CUDA, captured and replayed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matsim.core.errors import ConfigError
from matsim.train.config import load_train_config
from matsim.train.cuda_graph import check_static_dataset
from matsim.train.trainer import Trainer
from test_train import read_metrics, workdir, write_config  # noqa: F401  (workdir is a fixture)

pytestmark = [pytest.mark.filterwarnings("ignore:the training compositions determine only"),
              pytest.mark.usefixtures("one_thread")]


def _losses(run_dir: Path) -> list[tuple[float, float]]:
    return [(float(r["train_loss"]), float(r["valid_loss"])) for r in read_metrics(run_dir)]


def _train(root: Path, run: str, **changes) -> Path:
    trainer = Trainer(load_train_config(write_config(root, run, **changes)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return root / run


#: A tiny escaip for the tests (the bamboo default comes from test_train.write_config).
ESCAIP = {"name": "escaip", "hyperparameters": {"cutoff": 4.0, "hidden": 8, "num_layers": 1, "num_heads": 2,
                                                 "num_radial": 6, "max_neighbors": 8, "l_max_angular": 2,
                                                 "angular_channels": 2}}
MODELS = {"bamboo": {}, "escaip": {"model": ESCAIP}}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_fixed_shape_step_trains_like_the_ordinary_step(workdir: Path, model: str) -> None:
    """16 frames in batches of 4 (no partial batch to drop); cutoff 4 Å, so the all-pairs edge list holds pairs
    beyond the cutoff that must change nothing (escaip: they also take attention slots, with zero weight)."""
    plain = _losses(_train(workdir, f"plain-cpu-{model}", **{"training.max_epochs": 2}, **MODELS[model]))
    fixed = _losses(_train(workdir, f"fixed-cpu-{model}", **{"training.max_epochs": 2, "training.cuda_graph": True},
                           **MODELS[model]))
    assert len(fixed) == 2
    for (train_a, valid_a), (train_b, valid_b) in zip(plain, fixed):
        assert train_b == pytest.approx(train_a, rel=1e-9)
        assert valid_b == pytest.approx(valid_a, rel=1e-9)


def test_partial_batches_are_dropped(workdir: Path) -> None:
    run = _train(workdir, "fixed-drop", **{"training.max_epochs": 1, "training.cuda_graph": True,
                                           "optimizer.batch_size": 5})
    assert int(read_metrics(run)[-1]["step"]) == 3  # 16 frames: three batches of 5, one frame left out


def test_static_dataset_checks_name_the_problem() -> None:
    assert check_static_dataset([[1, 6, 8]] * 3, [False] * 3) == 3
    with pytest.raises(ConfigError, match="periodic"):
        check_static_dataset([[1, 6]], [True])
    with pytest.raises(ConfigError, match="same number of atoms"):
        check_static_dataset([[1, 6], [1, 6, 8]], [False, False])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", sorted(MODELS))
def test_captured_step_replays_the_eager_step_on_cuda(workdir: Path, model: str) -> None:
    """Past the warm-up steps the graph is captured and replayed; the losses follow the eager CUDA run.

    Not bit for bit: the capturable AdamW does its bias correction on the device in another order, and CUDA's atomic
    scatter-adds sum in varying order; float64 round-off of 1e-16 grows to ~1e-6 over the run's 24 steps."""
    changes = {"device": "cuda", "training.max_epochs": 3, "optimizer.batch_size": 2, **MODELS[model]}
    eager = _losses(_train(workdir, f"eager-cuda-{model}", **changes))
    captured = _losses(_train(workdir, f"captured-cuda-{model}", **changes, **{"training.cuda_graph": True}))
    for (train_a, valid_a), (train_b, valid_b) in zip(eager, captured):
        assert train_b == pytest.approx(train_a, rel=1e-5)
        assert valid_b == pytest.approx(valid_a, rel=1e-5)
