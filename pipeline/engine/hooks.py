"""The periodic work around the training loop, as small hooks (in the spirit of Detectron2's HookBase).

The trainer calls every hook, in the order of Trainer.hooks, at four points:

    before_epoch(trainer, epoch)      the epoch's steps are about to run, from trainer.state.position
    after_step(trainer, values)       an optimiser step is done and counted; values are {} when it was skipped
    after_train_epoch(trainer, end)   the epoch's steps are done, not yet validated
    after_epoch(trainer, end)         the epoch is validated; the position is at the start of the next one

`end` (EpochEnd) carries the epoch's figures from hook to hook: Validation adds its metrics and the monitor's
verdict, which later hooks log and checkpoint. Hooks act on the trainer's state and parts; each keeps only what
it alone needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.runtime.distributed import DistInfo, gather_to_main
from pipeline.engine.validation import Evaluation
from pipeline.runtime.seeding import capture_rng_state
from pipeline.engine.freezing import freeze_batchnorm_statistics, frozen_stages, set_frozen

if TYPE_CHECKING:
    from pipeline.engine.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class EpochEnd:
    """One epoch's results, handed from hook to hook once its steps are done."""
    logs: dict[str, float]              # the epoch's train figures; Validation adds the val/ metrics
    evaluation: Evaluation = field(default_factory=lambda: Evaluation(metrics={}))
    is_best: bool = False               # the monitored metric improved: the checkpoint is also best.pt


class Hook:
    """Does nothing at every point; each hook overrides the points it acts at."""

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        pass

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        pass

    def after_train_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        pass

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        pass


class TrainMode(Hook):
    """Training mode for the epoch, with its frozen backbone stages (model.backbone.freeze, progressive
    unfreezing) fixed: weights and BatchNorm statistics."""

    def __init__(self) -> None:
        self.frozen = 0                             # this epoch's frozen stages (the epoch's figures report it)
        self.wrapped_frozen: int | None = None      # the frozen stages the DDP wrapper was built with

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        backbone = trainer.model.backbone
        self.frozen = frozen_stages(trainer.config.model.backbone, len(backbone.stages), epoch)
        set_frozen(backbone, self.frozen)
        trainer.model.train()
        freeze_batchnorm_statistics(backbone, self.frozen)
        if trainer.dist.enabled and self.frozen != self.wrapped_frozen:
            # DDP registers the parameters that require grad when it is built: rebuild it when that set changes.
            device_ids = [trainer.device.index] if trainer.device.type == "cuda" else None
            trainer.step.wrapped = DistributedDataParallel(trainer.model, device_ids=device_ids)
            self.wrapped_frozen = self.frozen


class ProgressBar(Hook):
    """The epoch's steps on the terminal, with the epoch's mean loss so far: rank 0, when its output is a terminal."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        first = trainer.state.position.step_in_epoch
        if first == trainer.steps_per_epoch:    # resumed from the checkpoint before validation: no steps left
            return
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=first,
                        desc=f"epoch {epoch + 1}/{trainer.config.train.epochs}", leave=False, dynamic_ncols=True,
                        disable=None if trainer.dist.is_main else True)

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        totals = trainer.state.totals
        if values:
            self.bar.set_postfix(loss=f"{totals.sums['train/loss'] / totals.steps:.4f}")
        self.bar.update()
        if trainer.state.position.step_in_epoch == trainer.steps_per_epoch:
            self.bar.close()


class MetricsLog(Hook):
    """Step values to the tracker every train.log_every steps; each epoch's figures to the log and the tracker."""

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        step = trainer.state.position.global_step
        if values and trainer.tracker and step % trainer.config.train.log_every == 0:
            trainer.tracker.log_metrics(values, step=step)

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        position = trainer.state.position
        log.info("epoch %d/%d %s", position.epoch, trainer.config.train.epochs, headline(end.logs))
        if trainer.tracker:
            trainer.tracker.log_metrics({**end.logs, "epoch": position.epoch}, step=position.global_step)


class Checkpointing(Hook):
    """A checkpoint every train.checkpoint.every_steps steps, and two at each epoch's end: the trained epoch
    before validation, so a fault there costs the validation, not the epoch (resuming from it validates and
    goes on); then the validated epoch with its metrics, also as best.pt when the monitored metric improved."""

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        every, position = trainer.config.train.checkpoint.every_steps, trainer.state.position
        # The epoch's last step is saved at the epoch's end, before and after validation.
        if every and position.global_step % every == 0 and position.step_in_epoch < trainer.steps_per_epoch:
            save(trainer, metrics={}, is_best=False)

    def after_train_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        save(trainer, metrics={}, is_best=False)

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        save(trainer, end.evaluation.metrics, end.is_best)


class LossWeighting(Hook):
    """The weighting strategy's epoch end (DWA's weights follow each task's mean train loss of the epoch).

    It comes after the checkpoint of the trained epoch, which must not include it: resuming from that
    checkpoint runs it again.
    """

    def after_train_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        trainer.weighting.epoch_end({task: end.logs.get(f"epoch/train/{task}/loss", 0.0)
                                     for task in trainer.config.model.heads})


class Validation(Hook):
    """The epoch's validation, and what follows from its metrics: the monitor (best checkpoint; early stopping,
    which Trainer.fit reads from it) and the plateau schedule."""

    def after_train_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        end.evaluation = trainer.validate()
        end.logs = {**end.logs, **{f"val/{k}": v for k, v in end.evaluation.metrics.items()}}
        end.is_best = trainer.monitor.update(end.logs)
        trainer.scheduler.epoch_end(trainer.monitor.value(end.logs))

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        monitor = trainer.monitor
        if monitor.should_stop:
            log.info("early stopping: %s has not improved on %.4f for %d epochs", monitor.metric, monitor.best,
                     monitor.epochs_without_improvement)


def save(trainer: Trainer, metrics: dict[str, float], is_best: bool) -> None:
    """Every rank contributes its RNG states and BatchNorm statistics; rank 0 writes."""
    share_batchnorm_statistics(trainer.model, trainer.ema, trainer.dist)
    rng = gather_to_main(capture_rng_state(), trainer.dist)
    if trainer.dist.is_main:
        trainer.checkpoints.write(trainer.checkpoint_state(rng, metrics), trainer.state.position.global_step, is_best)


def share_batchnorm_statistics(model: nn.Module, ema: ModelEmaV3 | None, dist: DistInfo) -> None:
    """Average the BatchNorm running statistics over the ranks (timm's distribute_bn).

    Each rank updates them from its own batches (and PCGrad's steps never run DDP's buffer broadcast), so
    without this every rank would validate with other statistics than rank 0 checkpoints. Called at every
    save, so the epoch's validation and every checkpoint see the same statistics on every rank, and a run
    resumed from any checkpoint continues from what an uninterrupted one had.
    """
    if not dist.enabled:
        return
    distribute_bn(model, dist.world_size, reduce=True)
    if ema:
        distribute_bn(ema.module, dist.world_size, reduce=True)


def headline(logs: dict[str, float]) -> str:
    """The epoch's log line: train loss per task, throughput and the per-task val metrics (per-class values and
    loss terms are left to MLflow)."""
    shown = [k for k in logs if (k.startswith("epoch/train/") and k.endswith("loss")) or k.startswith("system/images")
             or (k.startswith("val/") and k.count("/") == 2)]
    return " ".join(f"{k.removeprefix('epoch/')}={logs[k]:.4g}" for k in shown)
