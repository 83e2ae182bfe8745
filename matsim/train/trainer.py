"""The one training loop of matsim potentials: ``matsim train config.yaml`` runs :class:`Trainer`.

What a run does, in order:

1. **Distributed set-up.** Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) it joins the process group
   (NCCL on CUDA, Gloo on CPU; with ``--nproc_per_node=1`` too), takes GPU ``LOCAL_RANK``, shards training
   batches with a ``DistributedSampler`` and validation frames round-robin, and sums validation errors with one ``all_reduce``. Only rank 0 writes files
   or prints. Without ``torchrun`` the same code runs as one process (world size 1).
2. **Data.** Graph datasets with neighbor lists at the model's cutoff, cached on disk
   (:class:`~matsim.datasets.graphs.GraphDataset`); a seeded or explicit split written to ``split.json``.
3. **Statistics → model.** E0s (isolated atoms or least squares), force RMS and the mean number of neighbors are
   computed on the training frames and passed to the model's constructor for each of ``species``,
   ``atomic_energies``, ``energy_scale``, ``avg_num_neighbors`` it accepts and the config leaves out. The filled
   hyperparameters are what the checkpoint stores (so ``load_model`` rebuilds the same model), and the statistics
   go into the checkpoint's ``statistics``. Fine-tuning (``model.init_from``, :mod:`matsim.train.finetune`)
   instead loads the model, hyperparameters and weights of a checkpoint, checks its species cover the data, and
   refits its E0s to the new labels (``model.refit_e0s``); the checkpoints record the parent's path and SHA-256 in
   ``metadata["init_from"]``.
4. **Loop.** AdamW; linear warm-up then cosine decay or reduce-on-plateau (a per-step schedule computed from the
   step count, so it resumes exactly); gradient-norm clipping; an EMA of the weights that is validated and saved;
   early stopping on the validation loss.
5. **Outputs in ``run_dir``.** ``best.pt`` and ``last.pt`` (model checkpoints of the EMA weights, with config,
   epoch, metrics and statistics in their metadata), ``resume.pt`` (raw weights, optimiser, schedule, EMA,
   early-stopping counters and RNG states: plain tensors and dicts, read with ``weights_only=True``),
   ``metrics.csv`` (TensorBoard events too when installed), ``config.yaml``, ``split.json``, ``statistics.json`` and
   ``errors.json`` (the final error table on validation and test files).

Exact resume: the state is saved at the end of every epoch; the shuffling order of epoch ``e`` is a function of
``seed + e`` only (``DistributedSampler.set_epoch``), the learning rate a function of the step count, and the RNG
states are restored; on CPU in float64 a resumed run reproduces the uninterrupted run's losses and weights bit
for bit (tests/test_train.py). Changing the model, data, loss, optimiser or schedule on resume is refused; the
``training`` section (e.g. ``max_epochs``) may change. Note the cosine schedule spans ``max_epochs``, so raising
``max_epochs`` on resume changes the remaining learning rates.
"""

from __future__ import annotations

import gc
import inspect
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from ase import Atoms
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from matsim.core.checkpoint import Checkpoint
from matsim.core.errors import CheckpointError, ConfigError, MatsimError
from matsim.core.io import atomic_torch_save, atomic_write_text
from matsim.datasets.atoms import read_frames, frame_targets
from matsim.datasets.graphs import GraphDataset
from matsim.datasets.splits import Split, save_split
from matsim.datasets.statistics import (
    DatasetStatistics,
    e0s_from_isolated_atoms,
    e0s_least_squares,
    force_rms,
    mean_num_neighbors,
    normalise_e0s,
    residual_energy_std,
)
from matsim.models import create, model_class, resolve_device, save_model
from matsim.models.forcefield import ForceField
from matsim.train.config import TrainConfig, load_train_config
from matsim.train.cuda_graph import CapturedTrainStep, StaticMoleculeBatch, check_static_dataset
from matsim.train.distributed import Distributed
from matsim.train.ema import ExponentialMovingAverage
from matsim.train.evaluate import ErrorAccumulator, batches, evaluate_dataset
from matsim.train.finetune import (add_to_e0s, check_model_section, check_species, fine_tuning_hyperparameters,
                                  load_parent, load_parent_weights, model_energies)
from matsim.train.losses import WeightedLoss
from matsim.train.reporting import EpochTotals, MetricsLog, Progress
from matsim.train.schedule import LRSchedule
from matsim.train.run_dir import RESUME_FILE, SPLIT_FILE, read_resume_state, run_split
from matsim.train.stopping import EarlyStopping
from matsim.train.state import get_rng_state, seed_everything, set_rng_state, to_cpu

__all__ = ["Trainer", "LRSchedule", "Distributed", "train_from_file", "RESUME_FILE"]

_RESUME_FORMAT = "matsim-resume"
#: Config sections that must not change on --resume (``training`` and ``data.test`` may). ``model.init_from`` is not
#: among them: a resumed fine-tuning run continues from its own resume.pt and never reads it again (the path may
#: differ on another machine).
_FROZEN = ("seed", "dtype", "model.name", "model.hyperparameters", "model.refit_e0s", "data.train", "data.valid",
           "data.keys", "data.split", "data.isolated_atoms", "data.e0s", "loss", "optimizer", "schedule")
#: Statistic hyperparameters filled from the data when a model's constructor takes them.
_STATISTIC_HYPERPARAMETERS = ("species", "atomic_energies", "avg_num_neighbors", "energy_scale")


# ---------------------------------------------------------------------------------------------------------------
# the training step as a module (so DDP sees only the loss)
# ---------------------------------------------------------------------------------------------------------------
class _TrainStep(nn.Module):
    """ForceField + loss in one ``forward`` returning the loss: DDP then traces unused parameters (e.g. a charge
    head without a charge loss) from the loss alone."""

    def __init__(self, potential: nn.Module, loss: WeightedLoss) -> None:
        super().__init__()
        self.forcefield = ForceField(potential)
        self.loss = loss

    def forward(self, graph: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pred = self.forcefield(graph, compute_forces=self.loss.needs_forces, compute_stress=self.loss.needs_stress,
                               training=True)
        total, terms = self.loss(pred, graph)
        detached = {k: v.detach() for k, v in pred.items() if torch.is_tensor(v)}
        return total, terms, detached


# ---------------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------------
class Trainer:
    """One training run of a registered potential from a :class:`TrainConfig` (see the module docstring).

    Args:
        config: the validated config (paths absolute, see :func:`load_train_config`).
        resume: continue the run in ``config.run_dir`` from its ``resume.pt``.
        console: a rich Console for output (default: a new one; silent on ranks other than 0).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.resume = resume
        wants_cuda = config.device != "cpu" and (config.device.startswith("cuda") or torch.cuda.is_available())
        self.dist = Distributed.from_env(use_cuda=wants_cuda)
        self.device = torch.device(f"cuda:{self.dist.local_rank}") if (self.dist.enabled and wants_cuda) \
            else resolve_device(config.device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        if config.training.num_threads is not None:
            torch.set_num_threads(config.training.num_threads)
        self.console = console or Console(quiet=not self.dist.is_main)
        if not self.dist.is_main:
            self.console.quiet = True
        self.run_dir = Path(config.run_dir)
        self.loss_fn = WeightedLoss(config.loss.weights(), config.loss.type, config.loss.huber_delta)
        self.targets = config.loss.targets()
        try:
            state = self._check_run_dir()
            self._setup_parent(state)
            self._setup_data(state)
            self._setup_model(state)
        except BaseException:
            self.dist.close()  # leave no process group behind a bad config or data file
            raise

    # --- set-up --------------------------------------------------------------------------------------------------
    def _check_run_dir(self) -> dict | None:
        state = read_resume_state(self.run_dir, self.resume, self.config.to_plain(), _FROZEN, _RESUME_FORMAT,
                                  "training.* and data.test", schema=type(self.config))
        if state is not None and int(state.get("world_size", 1)) != self.dist.world_size:
            self.console.print(f"[yellow]note: resuming with {self.dist.world_size} processes, the run used "
                               f"{state.get('world_size')}; batches differ from an uninterrupted run[/yellow]")
        return state

    def _setup_parent(self, state: dict | None) -> None:
        """The checkpoint of ``model.init_from`` (read only when starting, not on resume) and the model's name."""
        cfg = self.config.model
        self.parent: Checkpoint | None = None
        self.init_from: dict[str, Any] | None = state.get("init_from") if state is not None else None
        if state is None and cfg.init_from is not None:
            self.parent, self.init_from = load_parent(cfg.init_from)
            check_model_section(cfg, self.parent)
        self.model_name: str = str(state["model_name"]) if state is not None else \
            (self.parent.model if self.parent is not None else cfg.name)

    def _model_cutoff(self, state: dict | None) -> float:
        if state is not None:
            given = state["hyperparameters"]
        else:
            given = self.parent.hyperparameters if self.parent is not None else self.config.model.hyperparameters
        if "cutoff" in given:
            return float(given["cutoff"])
        default = _constructor_parameters(self.model_name).get("cutoff")
        if default is None or default.default is inspect.Parameter.empty:
            raise ConfigError(f"model.hyperparameters.cutoff: required for model {self.model_name!r} (no default)")
        return float(default.default)

    def _load(self, path: Path, targets: list[str]) -> GraphDataset:
        """A graph dataset; rank 0 builds the cache first, the other ranks then read it."""
        data = self.config.data
        kwargs = dict(cutoff=self.cutoff, keys=data.keys, targets=targets, dtype=self.dtype,
                      cache_dir=data.cache_dir, cache=data.cache)
        dataset = None
        if self.dist.is_main:
            dataset = GraphDataset.from_file(path, **kwargs)
        self.dist.barrier()
        if dataset is None:
            dataset = GraphDataset.from_file(path, **kwargs)
        return dataset

    def _setup_data(self, state: dict | None) -> None:
        data = self.config.data
        self.cutoff = self._model_cutoff(state)
        full = self._load(data.train, self.targets)
        if data.valid is not None:
            self.train_set = full
            self.valid_set = self._load(data.valid, self.targets)
            split = Split(train=list(range(len(full))), valid=[], num_frames=len(full), seed=None)
        else:
            split = run_split(len(full), data.split, self.run_dir, state is not None, data.train)
            self.train_set, self.valid_set = full.select(split.train), full.select(split.valid)
        self.split = split
        if self.dist.is_main and state is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_split(split, self.run_dir / SPLIT_FILE)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_plain(), sort_keys=False))

    def _statistics(self) -> DatasetStatistics:
        data = self.config.data
        train = self.train_set
        species = sorted(set(train.species()) | set(self.valid_set.species()))
        numbers = train.frame_numbers()
        has_energy = "energy" in train.targets
        e0_mode = data.e0s
        if isinstance(e0_mode, dict):
            e0s, source = normalise_e0s(e0_mode), "config"
        elif e0_mode == "isolated_atoms" or (e0_mode == "auto" and data.isolated_atoms is not None):
            frames = read_frames(data.isolated_atoms)
            keys = data.keys
            energies = [frame_targets(a, keys, ("energy",), source=data.isolated_atoms, index=i)["energy"]
                        for i, a in enumerate(frames)]
            e0s, source = e0s_from_isolated_atoms(frames, energies, str(data.isolated_atoms)), "isolated_atoms"
            missing = [z for z in species if z not in e0s]
            if missing:
                from ase.data import chemical_symbols

                raise MatsimError(f"{data.isolated_atoms}: no isolated-atom energy for "
                                  f"{', '.join(chemical_symbols[z] for z in missing)}")
        elif has_energy:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                e0s, source = e0s_least_squares(numbers, train.energies(), species), "least_squares"
            for warning in caught:
                self.console.print(f"[yellow]note:[/yellow] {warning.message}")
        else:
            e0s, source = {z: 0.0 for z in species}, "none (no energies)"
        if "forces" in train.targets:
            scale, scale_source = force_rms(train.forces()), "force_rms"
        elif has_energy:
            scale, scale_source = residual_energy_std(numbers, train.energies(), e0s), "energy_per_atom_std"
        else:
            scale, scale_source = 1.0, "default"
        if not scale > 0:
            scale, scale_source = 1.0, "default (zero spread in the data)"
        return DatasetStatistics(
            atomic_energies={int(z): float(e) for z, e in e0s.items()},
            e0s_source=source,
            energy_scale=float(scale),
            energy_scale_source=scale_source,
            avg_num_neighbors=mean_num_neighbors(train.num_edges(), train.num_atoms()),
            cutoff=self.cutoff,
            num_structures=len(train),
            num_atoms=train.num_atoms(),
            species=species,
        )

    def _hyperparameters(self, stats: DatasetStatistics) -> tuple[dict[str, Any], list[str]]:
        given = dict(self.config.model.hyperparameters)
        if isinstance(given.get("atomic_energies"), dict):
            given["atomic_energies"] = normalise_e0s(given["atomic_energies"])
        accepted = _constructor_parameters(self.model_name)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        values = {"species": list(stats.species), "atomic_energies": dict(stats.atomic_energies),
                  "avg_num_neighbors": stats.avg_num_neighbors, "energy_scale": stats.energy_scale}
        filled = []
        for name in _STATISTIC_HYPERPARAMETERS:
            if name not in given and (name in accepted or takes_any):
                given[name] = values[name]
                filled.append(name)
        return given, filled

    def _setup_model(self, state: dict | None) -> None:
        cfg = self.config
        if state is not None:
            self.statistics = dict(state["statistics"])
            self.hyperparameters = dict(state["hyperparameters"])
        elif self.parent is not None:
            seed_everything(cfg.seed)
            self.hyperparameters = fine_tuning_hyperparameters(cfg.model, self.parent)
        else:
            seed_everything(cfg.seed)
            self.statistics = self._statistics().as_dict()
            self.hyperparameters, filled = self._hyperparameters(DatasetStatistics(**self.statistics))
            self.statistics["filled_hyperparameters"] = filled
        try:
            model = create(self.model_name, **self.hyperparameters)
        except TypeError as exc:
            raise ConfigError(f"model.hyperparameters: do not fit model {self.model_name!r}: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"model.hyperparameters: {exc}") from exc
        if self.loss_fn.needs_charges and not getattr(model, "has_charges", False):
            raise ConfigError(f"loss.charges/loss.dipole: model {self.model_name!r} as configured predicts no charges")
        self.model = model.to(device=self.device, dtype=self.dtype)
        if state is None and self.parent is not None:
            try:  # after the cast: float64 weights load exactly into a float64 run
                load_parent_weights(self.model, self.parent, str(cfg.model.init_from))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise CheckpointError(f"model.init_from {cfg.model.init_from}: weights do not fit model "
                                      f"{self.model_name!r}: {first}") from exc
            self.statistics = self._start_fine_tuning()
        self.ema = ExponentialMovingAverage(self.model, cfg.training.ema_decay)
        opt = cfg.optimizer
        capture = cfg.training.cuda_graph and self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=torch.tensor(opt.lr, device=self.device) if capture else opt.lr,
            betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, amsgrad=opt.amsgrad,
            capturable=capture,
        )
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=False)
        # Whole batches from the dataset's tensors (GraphDataset.batch), not Batch.from_data_list of per-frame
        # graphs; the same index batches as DataLoader(batch_size=..., sampler=self.sampler) would make.
        workers = cfg.training.num_workers
        self.loader = DataLoader(_BatchedFrames(self.train_set), batch_size=None,
                                 sampler=BatchSampler(self.sampler, opt.batch_size, drop_last=cfg.training.cuda_graph),
                                 collate_fn=_whole_batch, num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=self.device.type == "cuda")
        self.schedule = LRSchedule(cfg.schedule, opt.lr, len(self.loader), cfg.training.max_epochs)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.stopping = EarlyStopping(cfg.training.early_stopping_patience)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            _set_capturable(self.optimizer, capture, self.device)
            self.schedule.load_state_dict(state["schedule"])
            self.ema.load_state_dict(state["ema"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.stopping.load_state_dict(state["early_stopping"])
            set_rng_state(state["rng"])
        step_module = _TrainStep(self.model, self.loss_fn)
        self.captured: CapturedTrainStep | None = None
        if cfg.training.cuda_graph:
            self.captured = self._captured_step(step_module, capture)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_step = DistributedDataParallel(step_module, device_ids=ids,
                                                      find_unused_parameters=self._has_unused_parameters(step_module))
        else:
            self.train_step = step_module

    def _captured_step(self, step_module: nn.Module, capture: bool) -> CapturedTrainStep:
        """The fixed-shape (CUDA-graph) training step of ``training.cuda_graph``; clear errors where it cannot run."""
        if self.dist.enabled:
            raise ConfigError("training.cuda_graph: runs in one process (not under torchrun)")
        train, batch_size = self.train_set, self.config.optimizer.batch_size
        if len(train) < batch_size:
            raise ConfigError(f"training.cuda_graph: {len(train)} training frames, fewer than one batch "
                              f"({batch_size}); the last incomplete batch is dropped")
        num_atoms = check_static_dataset(train.frame_numbers(), train.periodic())
        if not capture:
            self.console.print("[yellow]note:[/yellow] training.cuda_graph without CUDA: the fixed-shape step runs "
                               "eagerly")
        sample = train.batch(range(batch_size))
        targets = {key: sample[key] for key in sample.keys() if key.startswith("ref_")}
        static = StaticMoleculeBatch(batch_size, num_atoms, targets, self.dtype, self.device)
        return CapturedTrainStep(step_module, self.optimizer, list(self.model.parameters()),
                                 self.config.training.clip_grad_norm, static, capture=capture)

    def _start_fine_tuning(self) -> dict[str, Any]:
        """Species check and E0s (refitted or kept) of the model loaded from ``model.init_from``; returns the
        run's statistics: the parent's, with this run's E0s, data sizes and ``init_from`` record."""
        cfg, model, train = self.config, self.model, self.train_set
        check_species(set(train.species()) | set(self.valid_set.species()), model.species, cfg.model.init_from)
        e0s_source = "init_from (kept)"
        if cfg.model.refit_e0s:
            corrections, e0s_source = self._e0_corrections()
            add_to_e0s(model, corrections)
            kept = [z for z in model.species if z not in corrections]
            if corrections and kept:
                from ase.data import chemical_symbols

                self.console.print(f"[yellow]note:[/yellow] E0s of {', '.join(chemical_symbols[z] for z in kept)} "
                                   "(not in the training data) are kept from model.init_from")
        e0s = {int(z): float(model.atomic_energies[z]) for z in model.species}
        if "atomic_energies" in self.hyperparameters or "atomic_energies" in _constructor_parameters(self.model_name):
            self.hyperparameters["atomic_energies"] = dict(e0s)
        hp = self.hyperparameters
        stats = dict(self.parent.statistics)
        stats.setdefault("energy_scale", float(hp.get("energy_scale", 1.0)))
        stats.setdefault("avg_num_neighbors", float(hp.get("avg_num_neighbors", 1.0)))
        stats.setdefault("energy_scale_source", "init_from")
        stats.update(atomic_energies=e0s, e0s_source=e0s_source, species=list(model.species), cutoff=self.cutoff,
                     num_structures=len(train), num_atoms=train.num_atoms(), filled_hyperparameters=[],
                     init_from=self.init_from)
        return stats

    def _e0_corrections(self) -> tuple[dict[int, float], str]:
        """{Z: eV} to add to the loaded model's E0s, by the ``data.e0s`` method applied to the residual
        E_label - E_model (least squares over the training split, or each isolated atom); a mapping of E0s in the
        config is taken as the new E0s. See :mod:`matsim.train.finetune`."""
        data, model, train = self.config.data, self.model, self.train_set
        batch_size = self.config.optimizer.valid_batch_size or self.config.optimizer.batch_size
        if isinstance(data.e0s, dict):
            return {z: e - float(model.atomic_energies[z]) for z, e in normalise_e0s(data.e0s).items()}, "config"
        if data.e0s == "isolated_atoms" or (data.e0s == "auto" and data.isolated_atoms is not None):
            atoms = self._load(data.isolated_atoms, ["energy"])
            known = set(model.species)  # isolated atoms of other elements are not needed (and not supported)
            atoms = atoms.select([i for i, n in enumerate(atoms.frame_numbers()) if set(n.tolist()) <= known])
            residual = atoms.energies() - model_energies(model, atoms, batch_size, self.device)
            frames = [Atoms(numbers=n) for n in atoms.frame_numbers()]
            corrections = e0s_from_isolated_atoms(frames, residual, str(data.isolated_atoms))
            missing = [z for z in train.species() if z not in corrections]
            if missing:
                from ase.data import chemical_symbols

                raise MatsimError(f"{data.isolated_atoms}: no isolated-atom energy for "
                                  f"{', '.join(chemical_symbols[z] for z in missing)}")
            return corrections, "isolated_atoms (refitted to the init_from model)"
        if "energy" not in train.targets:
            return {}, "init_from (kept: no energies to refit to)"
        residual = train.energies() - model_energies(model, train, batch_size, self.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            corrections = e0s_least_squares(train.frame_numbers(), residual, train.species())
        for warning in caught:
            self.console.print(f"[yellow]note:[/yellow] {warning.message}")
        return corrections, "least_squares (refitted to the init_from model)"

    def _has_unused_parameters(self, step_module: nn.Module) -> bool:
        """Whether some parameters get no gradient from the loss (e.g. a charge head without a charge loss); DDP
        must then look for them every step. Probed once on a small batch, RNG untouched, ``.grad`` untouched."""
        size = min(self.config.optimizer.batch_size, len(self.train_set))
        graph = self.train_set.batch(range(size)).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            loss = step_module(graph)[0]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return any(g is None for g in grads)

    # --- the loop ------------------------------------------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train until ``training.max_epochs`` or early stopping; returns the final error table (rank 0).

        ``stop_after_epochs`` ends this call after that many epochs as if the job were interrupted (the state is
        saved; ``--resume`` continues), e.g. to fit a time-limited job slot.
        """
        cfg = self.config.training
        logger = MetricsLog(self.run_dir, self.loss_fn.weights, self.dist.is_main, cfg.tensorboard, self.epoch)
        progress = Progress(self.console, enabled=cfg.progress and self.dist.is_main)
        start_epoch, interrupted = self.epoch, False
        if self.dist.is_main:
            self._announce()
        try:
            with progress:
                progress.start_run(cfg.max_epochs, self.epoch)
                while self.epoch < cfg.max_epochs:
                    if stop_after_epochs is not None and self.epoch - start_epoch >= stop_after_epochs:
                        interrupted = True
                        break
                    t0 = time.perf_counter()
                    train_metrics = self._train_epoch(progress)
                    self.epoch += 1
                    row: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                           "lr": self.schedule.lr_at(max(self.step - 1, 0)), **train_metrics}
                    validate = self.epoch % cfg.valid_every == 0 or self.epoch == cfg.max_epochs
                    improved, stop = False, False
                    if validate:
                        valid = self._validate()
                        row.update({f"valid_{k}": v for k, v in valid.items() if k != "n_structures"})
                        monitored = valid.get("loss", train_metrics["train_loss"]) if len(self.valid_set) \
                            else train_metrics["train_loss"]
                        in_warmup = self.step < self.schedule.warmup_steps
                        self.schedule.epoch_end(monitored, in_warmup)
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
        if interrupted:
            self.dist.barrier()
            return {}
        table = self.final_errors()
        self.dist.barrier()
        return table

    def _train_epoch(self, progress: "Progress") -> dict[str, float]:
        clip = self.config.training.clip_grad_norm
        self.sampler.set_epoch(self.epoch)
        self.model.train()
        totals = EpochTotals(list(self.loss_fn.weights), self.device)
        params = list(self.model.parameters())
        progress.start_epoch(self.epoch + 1, len(self.loader))
        # No host-device synchronisation in this loop (the batch's checks happen on the host, the loss sums stay
        # on the device until the epoch ends), so the CPU queues the next step while the GPU runs this one.
        for graph in self.loader:
            graph = _to_device(graph, self.device)
            lr = self.schedule.lr_at(self.step)
            if self.captured is not None:
                loss, terms = self.captured(graph, lr)
                self.ema.update(self.model)
                self.step += 1
                totals.add(loss, terms, graph.num_systems)
                progress.advance(loss)
                continue
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, terms, _ = self.train_step(graph)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
            self.ema.update(self.model)
            self.step += 1
            totals.add(loss, terms, graph.num_systems)
            progress.advance(loss)
        return totals.result(self.dist)

    def _validate(self) -> dict[str, float]:
        model = self.ema.module
        model.eval()
        forcefield = ForceField(model)
        acc = ErrorAccumulator(self.device)
        shard = range(self.dist.rank, len(self.valid_set), self.dist.world_size)
        batch_size = self.config.optimizer.valid_batch_size or self.config.optimizer.batch_size
        for graph in batches(self.valid_set, batch_size, shard):
            graph = graph.to(self.device)
            pred = forcefield(graph, compute_forces=self.loss_fn.needs_forces, compute_stress=self.loss_fn.needs_stress)
            loss, _ = self.loss_fn(pred, graph)
            acc.add(pred, graph, loss.detach())
        acc.all_reduce()
        return acc.metrics()

    # --- files ---------------------------------------------------------------------------------------------------
    def _save(self, row: dict[str, Any], improved: bool) -> None:
        if not self.dist.is_main:
            return
        metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
        metadata = {"config": self.config.to_plain(), "epoch": self.epoch, "step": self.step, "metrics": metrics,
                    "weights": "ema" if self.config.training.ema_decay else "raw"}
        if self.init_from is not None:
            metadata["init_from"] = self.init_from
        save_model(self.ema.module, self.run_dir / "last.pt", self.statistics, metadata | {"kind": "last"})
        if improved or not (self.run_dir / "best.pt").exists():
            save_model(self.ema.module, self.run_dir / "best.pt", self.statistics, metadata | {"kind": "best"})
        state = {
            "format": _RESUME_FORMAT,
            "version": 1,
            "epoch": self.epoch,
            "step": self.step,
            "world_size": self.dist.world_size,
            "config": self.config.to_plain(),
            "model_name": self.model_name,
            "init_from": self.init_from,
            "hyperparameters": self.hyperparameters,
            "statistics": self.statistics,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "ema": to_cpu(self.ema.state_dict()),
            "early_stopping": self.stopping.state_dict(),
            "rng": get_rng_state(),
        }
        atomic_torch_save(state, self.run_dir / RESUME_FILE)
        stats_path = self.run_dir / "statistics.json"
        if not stats_path.exists():
            atomic_write_text(stats_path, json.dumps(self.statistics, indent=1) + "\n")

    def final_errors(self) -> dict[str, Any]:
        """Errors of the best checkpoint on the validation set and on each ``data.test`` file (rank 0 prints)."""
        if not self.dist.is_main:
            return {}
        from rich.table import Table

        from matsim.models import load_model

        best = self.run_dir / "best.pt"
        model = load_model(best, device=self.device) if best.exists() else self.ema.module
        batch_size = self.config.optimizer.valid_batch_size or self.config.optimizer.batch_size
        sets: dict[str, GraphDataset] = {}
        if len(self.valid_set):
            sets["validation"] = self.valid_set
        eval_targets = [t for t in ("energy", "forces", "stress") if t in self.targets]
        for path in self.config.data.test:
            sets[str(path)] = GraphDataset.from_file(
                path, cutoff=self.cutoff, keys=self.config.data.keys, targets=eval_targets,
                dtype=self.dtype, cache_dir=self.config.data.cache_dir, cache=self.config.data.cache)
        results = {name: evaluate_dataset(model, ds, batch_size, self.device) for name, ds in sets.items()}
        table = Table(title=f"errors of {best.name} (epoch {self.stopping.best_epoch})")
        columns = [("n_structures", "frames", "{:d}"), ("energy_mae_meV_per_atom", "E MAE meV/atom", "{:.3f}"),
                   ("energy_rmse_meV_per_atom", "E RMSE meV/atom", "{:.3f}"), ("forces_mae_meV_per_A", "F MAE meV/Å", "{:.2f}"),
                   ("forces_rmse_meV_per_A", "F RMSE meV/Å", "{:.2f}")]
        table.add_column("set")
        for _, title, _ in columns:
            table.add_column(title, justify="right")
        for name, metrics in results.items():
            table.add_row(name, *[fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in columns])
        self.console.print(table)
        atomic_write_text(self.run_dir / "errors.json", json.dumps(
            {"checkpoint": str(best), "best_epoch": self.stopping.best_epoch, "sets": results}, indent=1) + "\n")
        return results

    def _announce(self) -> None:
        s = self.statistics
        self.console.print(
            f"[bold]matsim train[/bold] {self.model_name} → {self.run_dir}  "
            f"({len(self.train_set)} train / {len(self.valid_set)} valid frames, {self.config.dtype}, {self.device}"
            f"{f', {self.dist.world_size} processes' if self.dist.enabled else ''})"
        )
        self.console.print(
            f"statistics: E0s ({s['e0s_source']}) for {len(s['atomic_energies'])} elements, energy_scale "
            f"{s['energy_scale']:.4g} ({s['energy_scale_source']}), avg_num_neighbors {s['avg_num_neighbors']:.3f}"
            + (f"; resuming after epoch {self.epoch}" if self.resume else "")
        )
        if self.init_from is not None:
            self.console.print(f"fine-tuning from {self.init_from['pretrained'] or self.init_from['path']} "
                               f"(sha256 {self.init_from['sha256'][:12]}…)")

    def close(self) -> None:
        """Leave the process group. DDP's reducer holds the group, so it is released first: the group is then torn
        down inside ``destroy_process_group``, at the same point on every rank, not later when the trainer is
        garbage-collected, when a peer may have exited (a rare hang at exit of ``torchrun`` under Gloo)."""
        if isinstance(getattr(self, "train_step", None), torch.nn.parallel.DistributedDataParallel):
            self.train_step = self.train_step.module
            gc.collect()  # DDP's hooks form reference cycles
        self.dist.close()


def train_from_file(config_path: str | Path, resume: bool = False, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load a training YAML (with overrides) and run it; the body of ``matsim train``."""
    config = load_train_config(config_path, overrides)
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _constructor_parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(model_class(name).__init__).parameters)


class _BatchedFrames(Dataset):
    """A GraphDataset indexed by lists of frames: ``[indices]`` is ``dataset.batch(indices)`` (for a DataLoader with
    ``batch_size=None`` and a BatchSampler; picklable, so it also runs on DataLoader workers)."""

    def __init__(self, dataset: GraphDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> Any:
        return self.dataset.batch(indices)


def _whole_batch(graph: Any) -> Any:
    """collate_fn of :class:`_BatchedFrames`: the item already is the batch."""
    return graph


def _set_capturable(optimizer: torch.optim.Optimizer, capturable: bool, device: torch.device) -> None:
    """After ``load_state_dict`` (which restores the saved run's settings): the learning rate as a device tensor
    and the step counters on the device when the step is captured, plain floats otherwise."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state and capturable:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)
            elif "step" in state:
                state["step"] = state["step"].cpu()


def _to_device(graph: Any, device: torch.device) -> Any:
    """The batch on ``device``: unchanged when already there; copied asynchronously (from pinned memory) to a GPU."""
    if graph.pos.device == device:
        return graph
    return graph.to(device, non_blocking=True)


