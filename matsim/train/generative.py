"""The training loop of generative models: ``matsim train config.yaml`` runs :class:`GenerativeTrainer` when the
config's model is a :class:`~matsim.models.generative.GenerativeModel` (e.g. ``cdvae``).

The model supplies its own loss (``model.loss(batch)["loss"]``) and batching (``collate``); everything else is the
potentials' machinery: AdamW, linear warm-up + cosine decay (:class:`~matsim.train.schedule.LRSchedule`, a pure
function of the step), gradient-norm clipping, an EMA of the weights that is validated and saved, early stopping
on the validation loss, rich progress and ``metrics.csv``.

Outputs in ``run_dir``: ``best.pt`` / ``last.pt`` (model checkpoints of the EMA weights via
:func:`matsim.models.save_model`; config, epoch and metrics in their metadata; the data-derived hyperparameters in
the checkpoint's hyperparameters), ``resume.pt`` (raw weights, optimiser, schedule, EMA, early-stopping counters
and RNG states; plain tensors and dicts), ``metrics.csv``, ``config.yaml``, ``split.json``.

Exact resume: the state is saved at the end of every epoch, the shuffling of epoch ``e`` is a function of
``seed + e`` only, the learning rate of the step count, and the RNG states (which draw the VAE and noise samples)
are restored, so a resumed run on CPU continues the uninterrupted run's numbers exactly. Changing the model, data,
optimiser or schedule on resume is refused; ``training`` (e.g. ``max_epochs``) may change. Validation draws its
noise from a fixed seed (without touching the training RNG), so validation losses of different epochs compare
the models, not the noise.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from matsim.core.checkpoint import Checkpoint, load_checkpoint
from matsim.core.errors import ConfigError
from matsim.core.io import atomic_torch_save, atomic_write_text
from matsim.datasets.splits import Split, save_split
from matsim.models import create, model_class, resolve_device, save_model
from matsim.models.generative import GenerativeModel, is_generative
from matsim.train.distributed import Distributed
from matsim.train.ema import ExponentialMovingAverage
from matsim.train.generative_config import TRAINING_SET_FIELDS, GenerativeTrainConfig, load_generative_config
from matsim.train.reporting import EpochTotals, MetricsLog, Progress
from matsim.train.schedule import LRSchedule
from matsim.train.run_dir import RESUME_FILE, SPLIT_FILE, read_resume_state, run_split
from matsim.train.stopping import EarlyStopping
from matsim.train.state import get_rng_state, seed_everything, set_rng_state, to_cpu

__all__ = ["GenerativeTrainer", "train_generative_from_file", "RESUME_FILE"]

_RESUME_FORMAT = "matsim-generative-resume"
#: Config sections that must not change on --resume.
_FROZEN = ("seed", "model", "data.train", "data.valid", "data.split", "data.property", "data.niggli",
           "data.max_rows", "data.structures", "data.spectra_repeat", "optimizer", "schedule")


class GenerativeTrainer:
    """One training run of a registered generative model (see the module docstring).

    Args:
        config: the validated config (paths absolute, see :func:`load_generative_config`).
        resume: continue the run in ``config.run_dir`` from its ``resume.pt``.
        console: a rich Console for output (default: a new one).
    """

    def __init__(self, config: GenerativeTrainConfig, resume: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.resume = resume
        self.device = resolve_device(config.device)
        if config.training.num_threads is not None:
            torch.set_num_threads(config.training.num_threads)
        self.console = console or Console()
        self.run_dir = Path(config.run_dir)
        self.model_class = model_class(config.model.name)
        if not is_generative(self.model_class):
            raise ConfigError(f"model.name: {config.model.name!r} is not a generative model")
        self._check_hyperparameters()
        state = self._check_run_dir()
        self._setup_data(state)
        self._setup_model(state)

    # --- set-up --------------------------------------------------------------------------------------------------
    def _check_hyperparameters(self) -> None:
        accepted = set(inspect.signature(self.model_class.__init__).parameters) - {"self"}
        unknown = sorted(set(self.config.model.hyperparameters) - accepted)
        if unknown:
            raise ConfigError(f"model.hyperparameters.{unknown[0]}: unknown hyperparameter of "
                              f"{self.config.model.name!r} (allowed: {', '.join(sorted(accepted))})")

    def _check_run_dir(self) -> dict | None:
        return read_resume_state(self.run_dir, self.resume, self.config.to_plain(), _FROZEN, _RESUME_FORMAT,
                                 "training.*", schema=type(self.config))

    def _read(self, path: Path) -> Any:
        options = self.config.data.model_dump(exclude={"train", "valid", "split", *TRAINING_SET_FIELDS})
        return self.model_class.load_dataset(path, **options)

    def _setup_data(self, state: dict | None) -> None:
        data = self.config.data
        full = self._read(data.train)
        if data.valid is not None:
            self.train_set, self.valid_set = full, self._read(data.valid)
            split = Split(train=list(range(len(full))), valid=[], num_frames=len(full), seed=None)
            held_out = self.valid_set
        else:
            split = run_split(len(full), data.split, self.run_dir, state is not None, data.train)
            self.train_set, self.valid_set = full.select(split.train), full.select(split.valid)
            in_train = set(split.train)
            held_out = full.select([i for i in range(len(full)) if i not in in_train])
        self.train_set = self.model_class.training_set(self.train_set, held_out, data)
        if state is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_split(split, self.run_dir / SPLIT_FILE)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_plain(), sort_keys=False))

    def _setup_model(self, state: dict | None) -> None:
        cfg = self.config
        parent = None
        if state is not None:
            self.hyperparameters = dict(state["hyperparameters"])
        elif cfg.model.init_from is not None:
            parent = self._parent_checkpoint(cfg.model.init_from)
            self.hyperparameters = dict(parent.hyperparameters)
            seed_everything(cfg.seed)
        else:
            accepted = set(inspect.signature(self.model_class.__init__).parameters)
            derived = self.model_class.data_hyperparameters(self.train_set, self.valid_set)
            self.hyperparameters = {k: v for k, v in derived.items() if k in accepted} | dict(cfg.model.hyperparameters)
            seed_everything(cfg.seed)
        try:
            self.model: GenerativeModel = create(cfg.model.name, **self.hyperparameters).to(self.device)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.hyperparameters: {exc}") from exc
        if parent is not None:
            self.model.load_state_dict(parent.state_dict)
        opt = cfg.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay,
                                           betas=opt.betas, eps=opt.eps, amsgrad=opt.amsgrad)
        self.steps_per_epoch = max(math.ceil(len(self.train_set) / opt.batch_size), 1)
        self.schedule = LRSchedule(cfg.schedule, opt.lr, self.steps_per_epoch, cfg.training.max_epochs)
        self.ema = ExponentialMovingAverage(self.model, cfg.training.ema_decay)
        self.epoch = self.step = 0
        self.stopping = EarlyStopping(cfg.training.early_stopping_patience)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.ema.load_state_dict(state["ema"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.stopping.load_state_dict(state["early_stopping"])
            set_rng_state(state["rng"])

    def _parent_checkpoint(self, path: Path) -> Checkpoint:
        """The checkpoint of ``model.init_from``, checked to be of the configured model."""
        parent = load_checkpoint(path)
        if parent.model != self.config.model.name:
            raise ConfigError(f"model.init_from: {path} holds a {parent.model!r} model, not {self.config.model.name!r}")
        return parent

    # --- the loop ------------------------------------------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train until ``training.max_epochs`` or early stopping (or, as if interrupted, after ``stop_after_epochs``
        epochs of this call). Returns ``{"epoch", "best_epoch", "best_valid_loss"}``."""
        cfg = self.config.training
        logger = MetricsLog(self.run_dir, {}, True, cfg.tensorboard, self.epoch)
        progress = Progress(self.console, enabled=cfg.progress)
        start_epoch = self.epoch
        self.console.print(
            f"[bold]matsim train[/bold] {self.config.model.name} → {self.run_dir}  ({len(self.train_set)} train / "
            f"{len(self.valid_set)} valid {self.model_class.dataset_kind}, float32, {self.device}"
            + (f"; resuming after epoch {self.epoch}" if self.resume else "") + ")")
        try:
            with progress:
                progress.start_run(cfg.max_epochs, self.epoch)
                while self.epoch < cfg.max_epochs:
                    if stop_after_epochs is not None and self.epoch - start_epoch >= stop_after_epochs:
                        break
                    t0 = time.perf_counter()
                    train_metrics = self._train_epoch(progress)
                    self.epoch += 1
                    row: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                           "lr": self.schedule.lr_at(max(self.step - 1, 0)), **train_metrics}
                    improved = stop = False
                    if self.epoch % cfg.valid_every == 0 or self.epoch == cfg.max_epochs:
                        if len(self.valid_set):
                            row.update(self._validate())
                        monitored = row.get("valid_selection_loss", row.get("valid_loss", row["train_loss"]))
                        self.schedule.epoch_end(monitored, self.step < self.schedule.warmup_steps)
                        improved, stop = self.stopping.update(monitored, self.epoch)
                    row["time_s"] = time.perf_counter() - t0
                    logger.write(row)
                    self._save(row, improved)
                    progress.end_epoch(row)
                    if stop:
                        self.console.print(self.stopping.message())
                        break
        finally:
            logger.close()
        return {"epoch": self.epoch, "best_epoch": self.stopping.best_epoch, "best_valid_loss": self.stopping.best}

    def _batches(self, dataset: Any, batch_size: int, order: list[int]) -> Iterator[Any]:
        """Batches of ``dataset`` items in ``order``, on the training device."""
        for start in range(0, len(order), batch_size):
            yield self.model_class.collate(dataset, order[start:start + batch_size]).to(self.device)

    def _train_epoch(self, progress: Progress) -> dict[str, float]:
        clip = self.config.training.clip_grad_norm
        shuffle = torch.Generator().manual_seed(self.config.seed + self.epoch)
        order = torch.randperm(len(self.train_set), generator=shuffle).tolist()
        self.model.train()
        totals: EpochTotals | None = None
        params = list(self.model.parameters())
        progress.start_epoch(self.epoch + 1, self.steps_per_epoch)
        for batch in self._batches(self.train_set, self.config.optimizer.batch_size, order):
            lr = self.schedule.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = self.model.loss(batch)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
            self.ema.update(self.model)
            self.step += 1
            if totals is None:
                totals = EpochTotals([k for k in out if k != "loss"], self.device)
            totals.add(loss, out, batch.num_systems)
            progress.advance(loss)
        return totals.result(Distributed()) if totals is not None else {"train_loss": math.nan}

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        model = self.ema.module
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        batch_size = self.config.optimizer.valid_batch_size or self.config.optimizer.batch_size
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            for batch in self._batches(self.valid_set, batch_size, list(range(len(self.valid_set)))):
                out = model.loss(batch)
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * batch.num_systems
                count += batch.num_systems
        return {f"valid_{'loss' if k == 'loss' else k + '_loss'}": v / max(count, 1) for k, v in sums.items()}

    # --- files ---------------------------------------------------------------------------------------------------
    def _save(self, row: dict[str, Any], improved: bool) -> None:
        metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
        metadata = {"config": self.config.to_plain(), "epoch": self.epoch, "step": self.step, "metrics": metrics,
                    "weights": "ema" if self.config.training.ema_decay else "raw",
                    "train_data": str(self.config.data.train),
                    "property": getattr(self.config.data, "property", None)}
        save_model(self.ema.module, self.run_dir / "last.pt", metadata=metadata | {"kind": "last"})
        if improved or not (self.run_dir / "best.pt").exists():
            save_model(self.ema.module, self.run_dir / "best.pt", metadata=metadata | {"kind": "best"})
        state = {
            "format": _RESUME_FORMAT,
            "version": 1,
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_plain(),
            "hyperparameters": self.hyperparameters,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "ema": to_cpu(self.ema.state_dict()),
            "early_stopping": self.stopping.state_dict(),
            "rng": get_rng_state(),
        }
        atomic_torch_save(state, self.run_dir / RESUME_FILE)


def train_generative_from_file(config_path: str | Path, resume: bool = False,
                               overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a generative training YAML (with overrides) and run it; ``matsim train`` for generative models."""
    config = load_generative_config(config_path, overrides)
    return GenerativeTrainer(config, resume=resume).fit()
