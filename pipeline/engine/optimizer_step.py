"""One optimiser step over a window of micro-batches (in the spirit of MMEngine's OptimWrapper).

Forward and backward of each micro-batch under the run's autocast, through the loss-weighting strategy (DDP
synchronises gradients only on the last micro-batch); then unscale (GradScaler), clip, and check that the
losses and the gradient norm, averaged over ranks so every rank decides alike, are finite. A non-finite step
changes nothing and is skipped with a warning; train.max_bad_steps of them in a row stop the run. A step
GradScaler skips for an fp16 overflow advances nothing else either. A step that trained advances the loss
weights, the schedule and the EMA. With a Distiller (model.distill) each micro-batch's head terms are joined by
the teacher's (pipeline/compression/distillation.py); without one the step is as if it did not exist.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable

import torch
from timm.utils import ModelEmaV3
from torch import nn

from pipeline.config.schema import TrainConfig
from pipeline.runtime.device import Precision
from pipeline.runtime.distributed import DistInfo, all_reduce_mean
from pipeline.model import MultiTaskModel
from pipeline.engine.optim import penalty
from pipeline.engine.schedules import Schedule
from pipeline.tracking.tracker import Tracker
from pipeline.engine.training_state import TrainingState
from pipeline.weighting import BackwardContext, CompoundLoss, Weighting, backward_context, compound_loss
from pipeline.weighting.base import average_gradients

if TYPE_CHECKING:
    from pipeline.compression.distillation import Distiller

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """train.max_bad_steps optimiser steps in a row had a non-finite loss or gradient."""


class OptimizerStep:
    """Owns the GradScaler (its state is checkpointed as "scaler"); the model, weighting, optimiser, schedule
    and EMA are the trainer's."""

    def __init__(self, model: MultiTaskModel, weighting: Weighting, optimizer: torch.optim.Optimizer,
                 scheduler: Schedule, ema: ModelEmaV3 | None, precision: Precision, train: TrainConfig,
                 dist: DistInfo, steps_per_epoch: int, distiller: Distiller | None = None) -> None:
        self.model, self.weighting, self.optimizer, self.scheduler = model, weighting, optimizer, scheduler
        self.ema, self.distiller = ema, distiller
        self.precision, self.train, self.dist, self.steps_per_epoch = precision, train, dist, steps_per_epoch
        self.scaler = precision.scaler()
        # The DDP wrapper under torchrun, set (and rebuilt when the frozen set changes) by hooks.TrainMode.
        self.wrapped: nn.Module = model
        # Called once per step after unscaling, before clipping and the update, when set: the step's whole
        # gradient (every micro-batch, averaged over ranks) is in .grad, true and unclipped, and the weights are
        # those before the update. The Diagnostics hook (pipeline/engine/diagnostics.py) reads them there.
        self.inspect_gradients: Callable[[], None] | None = None

    def run(self, window: list[Any], state: TrainingState, tracker: Tracker | None = None) -> dict[str, float]:
        """Forward and backward over the micro-batches, then one optimiser step. Returns the step's values,
        averaged over ranks, or {} when the step was skipped. Counts non-finite and skipped steps in
        state.position; the caller counts the step itself."""
        values = self.accumulate_gradients(window)
        grad_norm = self.unscale_and_clip()
        if not self.finite(values, grad_norm):
            self.skip_non_finite(values, grad_norm, state, tracker)
            return {}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        position = state.position
        if not math.isfinite(grad_norm):
            # An fp16 overflow: GradScaler skipped the update and lowered its scale. Nothing else advances
            # either (schedule, EMA, loss weights), and the step is not counted as one that trained.
            state.position = dataclasses.replace(position, skipped_steps=position.skipped_steps + 1)
            log.info("step %d: fp16 gradient overflow, step skipped; loss scale now %g",
                     position.global_step + 1, self.scaler.get_scale())
            return {}
        self.weighting.after_step()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)
        state.position = dataclasses.replace(position, bad_steps=0)
        return {**values, "train/grad_norm": grad_norm, "lr": group_lr(self.optimizer, "heads"),
                **{f"train/weight/{task}": weight for task, weight in self.weighting.weights().items()}}

    def accumulate_gradients(self, window: list[Any]) -> dict[str, float]:
        """The window's gradients in .grad (scaled); its mean loss values over micro-batches and ranks."""
        self.optimizer.zero_grad(set_to_none=True)
        context = backward_context(self.model, self.scaler, len(window), self.dist)
        if self.distiller is not None:  # the adapters are outside the model: strategies that route gradients
            # themselves (PCGrad) must route theirs too
            context = dataclasses.replace(context, task_specific=context.task_specific + self.distiller.parameters())
        # Strategies that reduce gradients themselves (PCGrad) run the plain model: no DDP hooks, no no_sync.
        reducer = self.dist.enabled and self.weighting.uses_ddp_reducer
        net = self.wrapped if reducer else self.model
        sums: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(window):
            synchronise = index == len(window) - 1
            with net.no_sync() if reducer and not synchronise else nullcontext():
                values = self.backward(net, batch, context)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / len(window)
        self.weighting.finish(context)
        if self.distiller is not None and self.weighting.uses_ddp_reducer:
            average_gradients(self.distiller.parameters(), self.dist)   # outside the DDP wrapper: averaged here
        names = list(sums)
        return dict(zip(names, all_reduce_mean(torch.stack([sums[n] for n in names]), self.dist).tolist()))

    def backward(self, net: nn.Module, batch: Any, context: BackwardContext) -> dict[str, torch.Tensor]:
        """One micro-batch: forward, the heads' losses, and the weighting strategy's backward; the values to log."""
        with self.precision.autocast():
            terms, features = self.task_terms(net, batch)
        loss = compound_loss(terms)
        extra = penalty(self.model, self.train.optimizer)
        if extra is not None:
            loss.terms["penalty"] = extra
        if features is not None:  # like the penalty: outside the task losses the weighting combines
            loss.terms["features"] = features
            extra = features if extra is None else extra + features
        total = self.weighting.backward(loss.per_task, context, extra)
        return loss_values(total, loss)

    def task_terms(self, net: nn.Module, batch: Any) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor | None]:
        """The forward and each head's loss terms, with the distillation's when distilling; and the feature
        distillation term (None without)."""
        if self.distiller is None:
            outputs = net(batch.image)
            return {task: head.loss(outputs[task], batch) for task, head in self.model.heads.items()}, None
        with self.distiller.watch(self.model) as student_maps:
            outputs = net(batch.image)
        terms = {task: head.loss(outputs[task], batch) for task, head in self.model.heads.items()}
        distilled = self.distiller.terms(self.model, terms, outputs, batch.image, student_maps)
        return distilled.tasks, distilled.features

    def unscale_and_clip(self) -> float:
        """The global gradient norm (after unscaling), clipped to train.grad_clip when set."""
        self.scaler.unscale_(self.optimizer)
        if self.inspect_gradients is not None:
            self.inspect_gradients()
        adapters = self.distiller.parameters() if self.distiller is not None else []
        params = [p for p in [*self.model.parameters(), *adapters] if p.grad is not None]
        if not params:
            return 0.0
        if self.train.grad_clip:
            return float(torch.nn.utils.clip_grad_norm_(params, self.train.grad_clip))
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))

    def finite(self, values: dict[str, float], grad_norm: float) -> bool:
        # fp16 overflows in the gradients are GradScaler's business: it skips the step and lowers the scale.
        gradients_ok = self.scaler.is_enabled() or math.isfinite(grad_norm)
        return gradients_ok and all(math.isfinite(v) for v in values.values())

    def skip_non_finite(self, values: dict[str, float], grad_norm: float, state: TrainingState,
                        tracker: Tracker | None) -> None:
        """Drop the step's gradients, count it, say what was not finite; raise after max_bad_steps in a row."""
        position = dataclasses.replace(state.position, bad_steps=state.position.bad_steps + 1,
                                       skipped_steps=state.position.skipped_steps + 1)
        state.position = position
        self.scaler.update()        # keeps GradScaler consistent after unscale_ without a step
        self.optimizer.zero_grad(set_to_none=True)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        message = (f"step {position.global_step + 1} (epoch {position.epoch + 1}, step {position.step_in_epoch + 1} "
                   f"of {self.steps_per_epoch}): non-finite {', '.join(bad) or 'gradient'}; losses "
                   + ", ".join(f"{k}={v:.4g}" for k, v in values.items()) + f"; gradient norm {grad_norm:.4g}")
        if tracker:
            tracker.log_metrics({"train/skipped_steps": position.skipped_steps}, step=position.global_step + 1)
        if position.bad_steps >= self.train.max_bad_steps:
            raise NonFiniteLossError(f"{message}. {position.bad_steps} non-finite steps in a row "
                                     f"(train.max_bad_steps): stopping")
        log.warning("%s; step skipped (%d in a row)", message, position.bad_steps)


def group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    return next(group["lr"] for group in optimizer.param_groups if group.get("name") == name)


def loss_values(total: torch.Tensor, loss: CompoundLoss) -> dict[str, torch.Tensor]:
    values = {"train/loss": total}
    values.update({f"train/{task}/loss": value for task, value in loss.per_task.items()})
    values.update({f"train/{name}": value for name, value in loss.terms.items()})
    return values
