"""The training loop: epochs of optimiser steps, each epoch validated and checkpointed.

Trainer.fit is the loop alone. One optimiser step (train.accumulate micro-batches, loss weighting, AMP,
clipping, non-finite steps) is optimizer_step.py's OptimizerStep; the work done around the steps (training
mode and frozen stages, progress bar, tracking, checkpoints, the loss weighting's epoch end, validation with
the monitor and plateau schedule) is hooks.py's. Everything needed to continue bit for bit is in the
checkpoint: weights, EMA, optimiser, schedule, scaler, the loop's state (position: the sampler skips what was
read; the epoch's totals; the history), every rank's RNG states, the monitor, the MLflow run id and, when
distilling, the feature adapters (the teacher is not saved: the config names it).
"""
from __future__ import annotations

import dataclasses
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from datasets.image_io import ImagePolicy
from datasets.sampling import ResumableDistributedSampler
from pipeline.compression.architecture import architecture
from pipeline.engine.checkpoint import CheckpointFolder
from pipeline.config.schema import Config, config_to_dict
from pipeline.runtime.device import Precision
from pipeline.runtime.distributed import DistInfo
from pipeline.engine.validation import Evaluation, evaluate
from pipeline.engine.diagnostics import diagnostics_hooks
from pipeline.engine.hooks import (Checkpointing, EpochEnd, Hook, LossWeighting, MetricsLog, ProgressBar, TrainMode,
                            Validation)
from pipeline.model import MultiTaskModel
from pipeline.engine.monitor import Monitor
from pipeline.engine.optim import build_optimizer
from pipeline.engine.optimizer_step import OptimizerStep
from pipeline.engine.schedules import build_scheduler, validate_scheduler
from pipeline.runtime.seeding import restore_rng_state
from pipeline.tracking.tracker import Tracker
from pipeline.engine.training_state import EpochTotals, Position, TrainingState
from pipeline.config.typed import ConfigError
from pipeline.weighting import build_weighting

if TYPE_CHECKING:
    from pipeline.compression.distillation import Distiller

log = logging.getLogger(__name__)


@dataclass
class DataInfo:
    """What the trainer must remember about the data to make a checkpoint usable on its own."""
    class_names: list[str]
    category_ids: list[int]
    # How files became pixels (datasets.image_io.ImagePolicy.to_dict(), resolved): eval and predict read alike.
    image_policy: dict[str, Any] = field(default_factory=lambda: ImagePolicy().to_dict())


@dataclass
class TrainResult:
    evaluation: Evaluation
    checkpoint: Path
    best_checkpoint: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)       # one entry per epoch
    last_step: dict[str, float] = field(default_factory=dict)           # the last trained step's values
    position: Position = field(default_factory=Position)
    seconds: float = 0.0
    stopped_early: bool = False


class Trainer:
    def __init__(self, config: Config, model: MultiTaskModel, train_loader: DataLoader, val_loader: DataLoader,
                 data_info: DataInfo, device: torch.device, precision: Precision, output_dir: Path,
                 tracker: Tracker | None = None, dist: DistInfo = DistInfo(), run_id: str | None = None,
                 distiller: Distiller | None = None, extra_hooks: tuple[Hook, ...] = ()):
        train = config.train
        validate_scheduler(train)  # a plateau schedule without train.monitor fails now, not after an epoch
        self.config, self.data_info, self.device, self.precision = config, data_info, device, precision
        self.tracker, self.dist, self.run_id, self.distiller = tracker, dist, run_id, distiller
        self.model = prepare_model(model, train.sync_batchnorm, dist, device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.sampler = train_sampler(train_loader)
        self.steps_per_epoch = len(train_loader) // train.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.accumulate: {train.accumulate} micro-batches per step, but each rank has "
                              f"only {len(train_loader)} batches of data.batch_size per epoch")
        weights = {task: head.weight for task, head in config.model.heads.items()}
        self.weighting = build_weighting(config.model.weighting, list(config.model.heads), weights).to(device)
        self.optimizer = build_optimizer(self.model, train.optimizer, config.model.backbone)
        weighting_group = self.weighting.param_group(train.optimizer.lr)
        if weighting_group:  # learned task weights (uncertainty, gradnorm): stepped with the model, scheduled alike
            self.optimizer.add_param_group(weighting_group)
        distill_group = distiller.param_group(train.optimizer.lr) if distiller is not None else None
        if distill_group:   # feature adapters: trained and scheduled with the model, but not part of it
            self.optimizer.add_param_group(distill_group)
        self.scheduler = build_scheduler(self.optimizer, train.scheduler, self.steps_per_epoch, train.epochs,
                                         monitor_mode=train.monitor_mode)
        self.ema = ModelEmaV3(self.model, decay=train.ema_decay) if train.ema_decay > 0 else None
        self.monitor = Monitor(train.monitor, train.monitor_mode, train.early_stopping.min_delta,
                               train.early_stopping.patience)
        self.checkpoints = CheckpointFolder(output_dir, train.checkpoint.keep_last)
        self.state = TrainingState()
        self.step = OptimizerStep(self.model, self.weighting, self.optimizer, self.scheduler, self.ema, precision,
                                  train, dist, self.steps_per_epoch, distiller)
        self.train_mode = TrainMode()
        # Each point calls them in this order: an epoch's figures are logged before its checkpoint, and the
        # trained epoch is checkpointed before the loss weighting's epoch end and before validation.
        self.hooks: list[Hook] = [self.train_mode, ProgressBar(), MetricsLog(), Checkpointing(), LossWeighting(),
                                  Validation(), *diagnostics_hooks(train.diagnostics)]
        self.hooks.extend(extra_hooks)  # the caller's own (tune's pruning), after every built-in one

    # ---- the loop -----------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Epochs from the current position to train.epochs, or until the monitor stops the run early."""
        start = time.perf_counter()
        evaluation = None
        while self.state.position.epoch < self.config.train.epochs and not self.monitor.should_stop:
            end = EpochEnd(logs=self.train_epoch(self.state.position.epoch))
            for hook in self.hooks:
                hook.after_train_epoch(self, end)     # checkpoint of the trained epoch, validation
            self.state.end_epoch(end.logs)
            for hook in self.hooks:
                hook.after_epoch(self, end)           # epoch log, checkpoint with the metrics
            evaluation = end.evaluation
        if evaluation is None:  # resumed a finished run: report its metrics, train nothing
            evaluation = self.validate()
        best = self.checkpoints.best if self.checkpoints.best.exists() else None
        return TrainResult(evaluation, self.checkpoints.last, best, self.state.history, self.state.last_step,
                           self.state.position, time.perf_counter() - start, self.monitor.should_stop)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Optimiser steps from the current position to the end of `epoch`; the epoch's train figures."""
        first = self.start_epoch(epoch)
        for hook in self.hooks:
            hook.before_epoch(self, epoch)
        batches = iter(self.train_loader)
        for _ in range(first, self.steps_per_epoch):
            values = self.train_step(batches)
            for hook in self.hooks:
                hook.after_step(self, values)
        totals = self.state.totals
        return {**totals.means(), "backbone/frozen_stages": float(self.train_mode.frozen),
                **system_figures(totals.images, totals.waited, totals.seconds, self.device)}

    def start_epoch(self, epoch: int) -> int:
        """Position the loop and the sampler at the next step of `epoch` (its first, unless resuming inside it);
        returns that step."""
        position = self.state.position
        first = position.step_in_epoch if position.epoch == epoch else 0
        if first == 0:
            self.state.totals = EpochTotals()
        self.state.position = dataclasses.replace(position, epoch=epoch, step_in_epoch=first)
        self.sampler.set_position(epoch, first * self.config.train.accumulate * self.train_loader.batch_size)
        return first

    def train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        """One optimiser step on the next train.accumulate micro-batches, counted in the position and the
        epoch's totals. Returns its values, {} when it was skipped."""
        totals, started = self.state.totals, time.perf_counter()
        window = [next(batches) for _ in range(self.config.train.accumulate)]
        totals.waited += time.perf_counter() - started
        values = self.step.run([batch.to(self.device) for batch in window], self.state, self.tracker)
        totals.images += sum(len(batch.image) for batch in window) * self.dist.world_size
        self.state.end_step(values)
        totals.seconds += time.perf_counter() - started
        return values

    def validate(self) -> Evaluation:
        """Validation metrics of the EMA weights when they are kept, else of the trained weights."""
        model = self.ema.module if self.ema else self.model
        return evaluate(model, self.val_loader, self.device, self.data_info.category_ids,
                        self.precision.autocast(), dist_info=self.dist)

    # ---- checkpoints (hooks.Checkpointing decides when) ---------------------------------------------------

    def checkpoint_state(self, rng: list[Any], metrics: dict[str, float]) -> dict[str, Any]:
        """What a checkpoint holds (restore() reads it back); `rng` has every rank's RNG states."""
        return {
            "model": self.model.state_dict(),
            "architecture": architecture(self.model),      # its shapes, which differ from the config's when pruned
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "position": dataclasses.asdict(self.state.position),
            "rng": rng,
            "monitor": self.monitor.state_dict(),
            "weighting": self.weighting.state_dict(),
            "distill": self.distiller.state_dict() if self.distiller is not None else None,
            "epoch_totals": dataclasses.asdict(self.state.totals),
            "history": self.state.history,
            "tracking_run_id": self.run_id,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.config),
            "class_names": self.data_info.class_names,
            "category_ids": self.data_info.category_ids,
            "image_policy": self.data_info.image_policy,
            "metrics": metrics,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (checkpoint_state()): the next step is the one after it."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        self.weighting.load_state_dict(state["weighting"])
        if self.distiller is not None:
            self.distiller.load_state_dict(state.get("distill"))
        self.state.position = Position(**state["position"])
        self.state.totals = EpochTotals(**state["epoch_totals"])
        self.state.history = list(state["history"])
        if state["world_size"] == self.dist.world_size:
            restore_rng_state(state["rng"][self.dist.rank])
        else:
            log.warning("resuming with %d processes where the checkpoint had %d: the data order and random "
                        "states differ from an uninterrupted run", self.dist.world_size, state["world_size"])
        position = self.state.position
        log.info("resumed at epoch %d, step %d of %d (global step %d)", position.epoch + 1, position.step_in_epoch,
                 self.steps_per_epoch, position.global_step)


def prepare_model(model: MultiTaskModel, sync_batchnorm: bool, dist: DistInfo, device: torch.device) -> nn.Module:
    if sync_batchnorm and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: PyTorch's SyncBatchNorm needs CUDA devices; this run is on "
                              f"{device.type}. Set it to false (BatchNorm statistics then stay per rank).")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def train_sampler(loader: DataLoader) -> ResumableDistributedSampler:
    if not isinstance(loader.sampler, ResumableDistributedSampler):
        raise TypeError("Trainer: the train loader must use a ResumableDistributedSampler (pipeline.engine.data.train_loader "
                        f"builds one), got {type(loader.sampler).__name__}")
    return loader.sampler


def system_figures(images: int, waited: float, seconds: float, device: torch.device) -> dict[str, float]:
    """Throughput of the whole job, the fraction of the time spent waiting for data, and peak memory."""
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"system/images_per_second": images / max(seconds, 1e-9),
            "system/data_wait_fraction": waited / max(seconds, 1e-9), "system/peak_memory_mb": peak_mb}
