"""The training loop: epochs of optimiser steps, validation, checkpoints, tracking.

One optimiser step reads `train.accumulate` micro-batches (DDP synchronises gradients only on the last),
combines the task losses, then unscales, clips, checks the result is finite and steps (optimizer.py's
OptimizerStep). Everything needed to continue bit for bit is in the checkpoint, written every N steps and
at each epoch end: weights, EMA, optimiser, schedule, scaler, position (epoch, step in epoch: the sampler
skips what was read), every rank's RNG states, the monitor and the MLflow run id.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.image_io import ImagePolicy
from datasets.sampling import ResumableDistributedSampler
from pipeline.checkpoint import CheckpointFolder
from pipeline.config import Config, config_to_dict
from pipeline.device import Precision
from pipeline.distributed import DistInfo, all_reduce_mean, gather_to_main
from pipeline.evaluate import Evaluation, evaluate
from pipeline.model import MultiTaskModel
from pipeline.monitor import Monitor
from pipeline.optim import build_optimizer, penalty
from pipeline.schedules import build_scheduler, validate_scheduler
from pipeline.seeding import capture_rng_state, restore_rng_state
from pipeline.tracking import Tracker
from pipeline.transfer import freeze_batchnorm_statistics, frozen_stages, set_frozen
from pipeline.typed_config import ConfigError
from pipeline.weighting import BackwardContext, CompoundLoss, backward_context, build_weighting, static_weighting

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """train.max_bad_steps optimiser steps in a row had a non-finite loss or gradient."""


@dataclass
class DataInfo:
    """What the trainer must remember about the data to make a checkpoint usable on its own."""
    class_names: list[str]
    category_ids: list[int]
    # How files became pixels (datasets.image_io.ImagePolicy.to_dict(), resolved): eval and predict read alike.
    image_policy: dict[str, Any] = field(default_factory=lambda: ImagePolicy().to_dict())


@dataclass
class Position:
    """Where training stands: epochs completed, optimiser steps done in the current epoch and overall."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    bad_steps: int = 0            # consecutive non-finite steps
    skipped_steps: int = 0        # all non-finite steps so far


@dataclass
class EpochTotals:
    """Running sums of the current epoch, checkpointed so a resumed epoch reports (and DWA sees) whole-epoch means."""
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    waited: float = 0.0           # seconds spent waiting for data
    seconds: float = 0.0          # seconds of training (validation excluded)


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
                 tracker: Tracker | None = None, dist: DistInfo = DistInfo(), run_id: str | None = None):
        train = config.train
        validate_scheduler(train)  # a plateau schedule without train.monitor fails now, not after an epoch
        self.config, self.data_info, self.device, self.precision = config, data_info, device, precision
        self.tracker, self.dist, self.run_id = tracker, dist, run_id
        self.model = prepare_model(model, train.sync_batchnorm, dist, device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.sampler = train_sampler(train_loader)
        self.steps_per_epoch = len(train_loader) // train.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.accumulate: {train.accumulate} micro-batches per step, but each rank has "
                              f"only {len(train_loader)} batches of data.batch_size per epoch")
        self.weights = {task: head.weight for task, head in config.model.heads.items()}
        self.weighting = build_weighting(config.model.weighting, list(config.model.heads), self.weights).to(device)
        self.optimizer = build_optimizer(self.model, train.optimizer, config.model.backbone)
        weighting_group = self.weighting.param_group(train.optimizer.lr)
        if weighting_group:  # learned task weights (uncertainty, gradnorm): stepped with the model, scheduled alike
            self.optimizer.add_param_group(weighting_group)
        self.scheduler = build_scheduler(self.optimizer, train.scheduler, self.steps_per_epoch, train.epochs,
                                         monitor_mode=train.monitor_mode)
        self.scaler = precision.scaler()
        self.ema = ModelEmaV3(self.model, decay=train.ema_decay) if train.ema_decay > 0 else None
        self.monitor = Monitor(train.monitor, train.monitor_mode, train.early_stopping.min_delta,
                               train.early_stopping.patience)
        self.checkpoints = CheckpointFolder(output_dir, train.checkpoint.keep_last)
        self.position = Position()
        self.totals = EpochTotals()
        self.history: list[dict[str, float]] = []
        # Only the last step's values are kept: every step's are in the run's metrics.jsonl, and a list grown
        # each step would grow every checkpoint with it.
        self.last_step: dict[str, float] = {}
        self.wrapped: nn.Module = self.model   # the DDP wrapper under torchrun, rebuilt when the frozen set changes
        self.wrapped_frozen: int | None = None

    # ---- epochs -------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        start = time.perf_counter()
        evaluation, stopped_early = Evaluation(metrics={}), self.monitor.should_stop
        first_epoch = self.position.epoch
        while self.position.epoch < self.config.train.epochs and not stopped_early:
            train_logs = self.train_epoch(self.position.epoch)
            # The trained epoch is on disk before validation: a fault there costs the validation, not the
            # epoch (resuming from this checkpoint validates and goes on).
            self.save(metrics={}, is_best=False)
            self.weighting.epoch_end({task: train_logs.get(f"epoch/train/{task}/loss", 0.0)
                                      for task in self.config.model.heads})
            evaluation = self.validate()
            logs = {**train_logs, **{f"val/{k}": v for k, v in evaluation.metrics.items()}}
            is_best = self.monitor.update(logs)
            self.scheduler.epoch_end(self.monitor.value(logs))
            self.position = dataclasses.replace(self.position, epoch=self.position.epoch + 1, step_in_epoch=0)
            self.history.append(logs)
            log.info("epoch %d/%d %s", self.position.epoch, self.config.train.epochs, headline(logs))
            if self.tracker:
                self.tracker.log_metrics({**logs, "epoch": self.position.epoch}, step=self.position.global_step)
            self.save(evaluation.metrics, is_best)
            stopped_early = self.monitor.should_stop
            if stopped_early:
                log.info("early stopping: %s has not improved on %.4f for %d epochs", self.monitor.metric,
                         self.monitor.best, self.monitor.epochs_without_improvement)
        if self.position.epoch == first_epoch:  # resumed a finished run: report its metrics, train nothing
            evaluation = self.validate()
        best = self.checkpoints.best if self.checkpoints.best.exists() else None
        return TrainResult(evaluation, self.checkpoints.last, best, self.history, self.last_step, self.position,
                           time.perf_counter() - start, stopped_early)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Optimiser steps from the current position to the end of `epoch`; the epoch's mean train losses."""
        accumulate = self.config.train.accumulate
        first = self.position.step_in_epoch if self.position.epoch == epoch else 0
        if first == 0:
            self.totals = EpochTotals()
        self.position = dataclasses.replace(self.position, epoch=epoch, step_in_epoch=first)
        self.sampler.set_position(epoch, first * accumulate * self.train_loader.batch_size)
        frozen = self.set_train_mode(epoch)
        totals, batches = self.totals, iter(self.train_loader)
        bar = tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{self.config.train.epochs}",
                   leave=False, dynamic_ncols=True, disable=None if self.dist.is_main else True)
        for _ in range(first, self.steps_per_epoch):
            started = time.perf_counter()
            window = [next(batches) for _ in range(accumulate)]
            totals.waited += time.perf_counter() - started
            values = self.optimizer_step([batch.to(self.device) for batch in window])
            totals.images += sum(len(batch.image) for batch in window) * self.dist.world_size
            self.position = dataclasses.replace(self.position, step_in_epoch=self.position.step_in_epoch + 1,
                                                global_step=self.position.global_step + 1)
            if values:
                totals.steps += 1
                for key, value in values.items():
                    totals.sums[key] = totals.sums.get(key, 0.0) + value
                self.log_step(values)
                bar.set_postfix(loss=f"{totals.sums['train/loss'] / totals.steps:.4f}")
            bar.update()
            totals.seconds += time.perf_counter() - started
            self.save_every_n_steps()
        bar.close()
        # Per-step values are logged under their own keys at every step; the epoch's means get an "epoch/" prefix.
        means = {f"epoch/{key}": total / max(totals.steps, 1) for key, total in totals.sums.items() if key != "lr"}
        return {**means, "backbone/frozen_stages": float(frozen),
                **system_figures(totals.images, totals.waited, totals.seconds, self.device)}

    def set_train_mode(self, epoch: int) -> int:
        """Training mode, with this epoch's frozen stages fixed (weights and BatchNorm statistics)."""
        backbone = self.model.backbone
        frozen = frozen_stages(self.config.model.backbone, len(backbone.stages), epoch)
        set_frozen(backbone, frozen)
        self.model.train()
        freeze_batchnorm_statistics(backbone, frozen)
        if self.dist.enabled and frozen != self.wrapped_frozen:
            # DDP registers the parameters that require grad when it is built: rebuild it when that set changes.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=device_ids)
            self.wrapped_frozen = frozen
        return frozen

    def validate(self) -> Evaluation:
        """Validation metrics of the EMA weights when they are kept, else of the trained weights."""
        model = self.ema.module if self.ema else self.model
        return evaluate(model, self.val_loader, self.device, self.data_info.category_ids,
                        self.precision.autocast(), dist_info=self.dist)

    # ---- one optimiser step -------------------------------------------------------------------------------

    def optimizer_step(self, window: list[Any]) -> dict[str, float]:
        """Forward and backward over the micro-batches, then one optimiser step. Returns the step's values,
        averaged over ranks, or {} when the step was skipped for a non-finite loss or gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        context = backward_context(self.model, self.scaler, len(window), self.dist)
        # Strategies that reduce gradients themselves (PCGrad) run the plain model: no DDP hooks, no no_sync.
        reducer = self.dist.enabled and self.weighting.uses_ddp_reducer
        net = self.wrapped if reducer else self.model
        sums: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(window):
            synchronise = index == len(window) - 1
            with net.no_sync() if reducer and not synchronise else nullcontext():
                loss = self.backward(net, batch, context)
            for key, value in loss_values(loss).items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / len(window)
        self.weighting.finish(context)
        names = list(sums)
        values = dict(zip(names, all_reduce_mean(torch.stack([sums[n] for n in names]), self.dist).tolist()))
        grad_norm = self.unscale_and_clip()
        if not self.finite(values, grad_norm):
            self.skip_step(values, grad_norm)
            return {}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not math.isfinite(grad_norm):
            # An fp16 overflow: GradScaler skipped the update and lowered its scale. Nothing else advances
            # either (schedule, EMA, loss weights), and the step is not counted as one that trained.
            self.position = dataclasses.replace(self.position, skipped_steps=self.position.skipped_steps + 1)
            log.info("step %d: fp16 gradient overflow, step skipped; loss scale now %g",
                     self.position.global_step + 1, self.scaler.get_scale())
            return {}
        self.weighting.after_step()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)
        self.position = dataclasses.replace(self.position, bad_steps=0)
        return {**values, "train/grad_norm": grad_norm, "lr": self.group_lr("heads"),
                **{f"train/weight/{task}": weight for task, weight in self.weighting.weights().items()}}

    def backward(self, net: nn.Module, batch: Any, context: BackwardContext) -> CompoundLoss:
        """One micro-batch: forward, the heads' losses, and the weighting strategy's backward."""
        with self.precision.autocast():
            outputs = net(batch.image)
            terms = {task: head.loss(outputs[task], batch) for task, head in self.model.heads.items()}
        loss = static_weighting(terms, self.weights)   # per-task sums and named terms, for the logs
        extra = penalty(self.model, self.config.train.optimizer)
        if extra is not None:
            loss.terms["penalty"] = extra
        loss.total = self.weighting.backward(loss.per_task, context, extra)
        return loss

    def group_lr(self, name: str) -> float:
        return next(group["lr"] for group in self.optimizer.param_groups if group.get("name") == name)

    def unscale_and_clip(self) -> float:
        """The global gradient norm (after unscaling), clipped to train.grad_clip when set."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if self.config.train.grad_clip:
            return float(torch.nn.utils.clip_grad_norm_(params, self.config.train.grad_clip))
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))

    def finite(self, values: dict[str, float], grad_norm: float) -> bool:
        # fp16 overflows in the gradients are GradScaler's business: it skips the step and lowers the scale.
        gradients_ok = self.scaler.is_enabled() or math.isfinite(grad_norm)
        return gradients_ok and all(math.isfinite(v) for v in values.values())

    def skip_step(self, values: dict[str, float], grad_norm: float) -> None:
        position = dataclasses.replace(self.position, bad_steps=self.position.bad_steps + 1,
                                       skipped_steps=self.position.skipped_steps + 1)
        self.position = position
        self.scaler.update()        # keeps GradScaler consistent after unscale_ without a step
        self.optimizer.zero_grad(set_to_none=True)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        message = (f"step {position.global_step + 1} (epoch {position.epoch + 1}, step {position.step_in_epoch + 1} "
                   f"of {self.steps_per_epoch}): non-finite {', '.join(bad) or 'gradient'}; losses "
                   + ", ".join(f"{k}={v:.4g}" for k, v in values.items()) + f"; gradient norm {grad_norm:.4g}")
        if self.tracker:
            self.tracker.log_metrics({"train/skipped_steps": position.skipped_steps}, step=position.global_step + 1)
        if position.bad_steps >= self.config.train.max_bad_steps:
            raise NonFiniteLossError(f"{message}. {position.bad_steps} non-finite steps in a row "
                                     f"(train.max_bad_steps): stopping")
        log.warning("%s; step skipped (%d in a row)", message, position.bad_steps)

    def log_step(self, values: dict[str, float]) -> None:
        step = self.position.global_step
        self.last_step = values
        if self.tracker and step % self.config.train.log_every == 0:
            self.tracker.log_metrics(values, step=step)

    # ---- checkpoints --------------------------------------------------------------------------------------

    def save_every_n_steps(self) -> None:
        every = self.config.train.checkpoint.every_steps
        # The epoch's last step is saved by fit(), before and after validation.
        if every and self.position.global_step % every == 0 and self.position.step_in_epoch < self.steps_per_epoch:
            self.save(metrics={}, is_best=False)

    def save(self, metrics: dict[str, float], is_best: bool) -> None:
        """Every rank contributes its RNG states and BatchNorm statistics; rank 0 writes."""
        self.share_batchnorm_statistics()
        rng = gather_to_main(capture_rng_state(), self.dist)
        if not self.dist.is_main:
            return
        self.checkpoints.write({
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": dataclasses.asdict(self.position),
            "rng": rng,
            "monitor": self.monitor.state_dict(),
            "weighting": self.weighting.state_dict(),
            "epoch_totals": dataclasses.asdict(self.totals),
            "history": self.history,
            "tracking_run_id": self.run_id,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.config),
            "class_names": self.data_info.class_names,
            "category_ids": self.data_info.category_ids,
            "image_policy": self.data_info.image_policy,
            "metrics": metrics,
        }, self.position.global_step, is_best)

    def share_batchnorm_statistics(self) -> None:
        """Average the BatchNorm running statistics over the ranks (timm's distribute_bn).

        Each rank updates them from its own batches (and PCGrad's steps never run DDP's buffer broadcast), so
        without this every rank would validate with other statistics than rank 0 checkpoints. Called at every
        save, so the epoch's validation and every checkpoint see the same statistics on every rank, and a run
        resumed from any checkpoint continues from what an uninterrupted one had.
        """
        if not self.dist.enabled:
            return
        distribute_bn(self.model, self.dist.world_size, reduce=True)
        if self.ema:
            distribute_bn(self.ema.module, self.dist.world_size, reduce=True)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by save(): the next step is the one after it."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        self.weighting.load_state_dict(state["weighting"])
        self.position = Position(**state["position"])
        self.totals = EpochTotals(**state["epoch_totals"])
        self.history = list(state["history"])
        if state["world_size"] == self.dist.world_size:
            restore_rng_state(state["rng"][self.dist.rank])
        else:
            log.warning("resuming with %d processes where the checkpoint had %d: the data order and random "
                        "states differ from an uninterrupted run", self.dist.world_size, state["world_size"])
        log.info("resumed at epoch %d, step %d of %d (global step %d)", self.position.epoch + 1,
                 self.position.step_in_epoch, self.steps_per_epoch, self.position.global_step)


def prepare_model(model: MultiTaskModel, sync_batchnorm: bool, dist: DistInfo, device: torch.device) -> nn.Module:
    if sync_batchnorm and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: PyTorch's SyncBatchNorm needs CUDA devices; this run is on "
                              f"{device.type}. Set it to false (BatchNorm statistics then stay per rank).")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def train_sampler(loader: DataLoader) -> ResumableDistributedSampler:
    if not isinstance(loader.sampler, ResumableDistributedSampler):
        raise TypeError("Trainer: the train loader must use a ResumableDistributedSampler (pipeline.data.train_loader "
                        f"builds one), got {type(loader.sampler).__name__}")
    return loader.sampler


def loss_values(loss: CompoundLoss) -> dict[str, torch.Tensor]:
    values = {"train/loss": loss.total}
    values.update({f"train/{task}/loss": value for task, value in loss.per_task.items()})
    values.update({f"train/{name}": value for name, value in loss.terms.items()})
    return values


def system_figures(images: int, waited: float, seconds: float, device: torch.device) -> dict[str, float]:
    """Throughput of the whole job, the fraction of the time spent waiting for data, and peak memory."""
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"system/images_per_second": images / max(seconds, 1e-9),
            "system/data_wait_fraction": waited / max(seconds, 1e-9), "system/peak_memory_mb": peak_mb}


def headline(logs: dict[str, float]) -> str:
    """The epoch's log line: train loss per task, throughput and the per-task val metrics (per-class values and
    loss terms are left to MLflow)."""
    shown = [k for k in logs if (k.startswith("epoch/train/") and k.endswith("loss")) or k.startswith("system/images")
             or (k.startswith("val/") and k.count("/") == 2)]
    return " ".join(f"{k.removeprefix('epoch/')}={logs[k]:.4g}" for k in shown)
