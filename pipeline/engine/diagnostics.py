"""Training diagnostics ("babysitting"): what a person watching a run would look at, logged and checked.

On when train.diagnostics.every_steps > 0 (the trainer adds the hook only then: off costs nothing). Every
`every_steps` optimiser steps, for each group (each backbone stage, "backbone/stage<i>", and each head,
"head/<task>"; the figures are pipeline/engine/diagnostics_maths.py's):

    diag/grad_norm/<group>       the L2 norm of the step's gradient: unscaled (AMP), summed over the accumulated
                                 micro-batches and averaged over ranks, before clipping
    diag/update_ratio/<group>    ||w_after - w_before|| / ||w_before|| of the step (about 1e-3 is healthy)

At each epoch end (with `activations`), for each backbone stage's output on a fixed batch (the first images of
the first validation batch, the same every epoch; eval mode, no gradients): diag/act/<stage>/mean, /std and
/dead_fraction (channels never > 0). Then the warning rules (diagnostics_maths.py's docstring); each warning
is a log.warning and counts in diag/warnings/<kind> (update_ratio, loss_not_falling, overfitting,
underfitting), logged at every epoch end (0: none so far). At the end of training, diagnostics.png (the
figures over the steps) is written to the run's folder and logged as an artifact.

The gradients and the weights before the update are read at OptimizerStep.inspect_gradients, after unscaling
and before clipping and the update; a copy of the weights is taken only on the steps that are logged. Under
DDP the gradients (averaged) and weights are the same on every rank, so rank 0 alone computes and logs:
nothing here is a collective call. The rules' running state (step counts, first losses after warm-up) is not
checkpointed: a resumed run starts it afresh, and its plot shows the steps since the resume.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from torch import Tensor, nn

from pipeline.config.schema import DiagnosticsConfig
from pipeline.engine.diagnostics_maths import (TRAIN_LOSS, LossWatch, RatioWatch, grad_norms, overfitting,
                                               parameter_groups, stage_activations, underfitting, update_ratios,
                                               weights_before)
from pipeline.engine.hooks import EpochEnd, Hook
from pipeline.engine.schedules import to_steps

if TYPE_CHECKING:
    from pipeline.engine.trainer import Trainer

log = logging.getLogger(__name__)

FIGURE_FILE = "diagnostics.png"
FIXED_IMAGES = 32                   # at most this many images of the first validation batch
HEALTHY_RATIO = 1e-3
WARNINGS = ("update_ratio", "loss_not_falling", "overfitting", "underfitting")


def diagnostics_hooks(config: DiagnosticsConfig) -> list[Hook]:
    """[Diagnostics] when train.diagnostics is on (every_steps > 0), else none."""
    return [Diagnostics(config)] if config.every_steps > 0 else []


class Diagnostics(Hook):
    """The figures and warnings of the module docstring; rank 0 only, its state kept for the final plot."""

    def __init__(self, config: DiagnosticsConfig) -> None:
        self.config = config
        self.ratios = RatioWatch(config.ratio_band, config.ratio_patience)
        self.losses = LossWatch(config.loss_window, config.min_loss_drop)
        self.before: dict[str, list[tuple[nn.Parameter, Tensor]]] | None = None  # weights, on a logged step
        self.grads: dict[str, float] = {}
        self.images: Tensor | None = None               # the fixed batch of the activation statistics
        self.series: dict[str, list[tuple[int, float]]] = {}   # every logged figure: key -> (step, value)
        self.warnings = dict.fromkeys(WARNINGS, 0)
        self.active: set[str] = set()                   # epoch rules that hold now: warned once until they stop
        self.warmup_steps = self.warmup_epochs = 0

    # ---- hook points ------------------------------------------------------------------------------------

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        if not trainer.dist.is_main:    # the same gradients and weights on every rank: rank 0 alone looks
            return
        train = trainer.config.train
        self.warmup_steps = to_steps(train.scheduler, trainer.steps_per_epoch, train.epochs).warmup
        self.warmup_epochs = math.ceil(train.scheduler.warmup_epochs)
        trainer.step.inspect_gradients = partial(self.capture, trainer)

    def capture(self, trainer: Trainer) -> None:
        """At OptimizerStep.inspect_gradients: the step's gradient norms and, to measure its update, a copy of
        the weights; on logged steps only."""
        if (trainer.state.position.global_step + 1) % self.config.every_steps:   # the step not yet counted
            return
        groups = parameter_groups(trainer.model)
        self.grads, self.before = grad_norms(groups), weights_before(groups)

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        if not trainer.dist.is_main:
            return
        step = trainer.state.position.global_step
        past_warmup = step >= self.warmup_steps
        before, self.before = self.before, None
        if values and past_warmup and self.losses.add(values["train/loss"]):
            first, recent = self.losses.means()
            self.warn("loss_not_falling", step,
                      f"the mean train loss of the last {self.config.loss_window} steps ({recent:.4g}) is not "
                      f"{self.config.min_loss_drop:.0%} below that of the first {self.config.loss_window} after "
                      f"warm-up ({first:.4g}): check the learning rate (too low, or so high it bounces), the "
                      "labels and the loss weights")
        if not values or before is None:  # not a logged step, or skipped (non-finite, fp16 overflow): no update
            return
        ratios = update_ratios(before)
        self.record(trainer, step, {**{f"diag/grad_norm/{g}": v for g, v in self.grads.items()},
                                    **{f"diag/update_ratio/{g}": v for g, v in ratios.items()}})
        for group in self.ratios.update(ratios) if past_warmup else []:
            low, high = self.config.ratio_band
            advice = "too low: it barely learns" if ratios[group] < low else "too high: it is thrown around"
            self.warn("update_ratio", step,
                      f"{group}: update/weight ratio {ratios[group]:.2g} outside [{low:g}, {high:g}] for "
                      f"{self.config.ratio_patience} logged steps in a row (about {HEALTHY_RATIO:g} is healthy); "
                      f"its learning rate looks {advice} (train.optimizer.lr, model.backbone.stage_lr)")

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        if not trainer.dist.is_main:
            return
        step = trainer.state.position.global_step
        if self.config.activations:
            self.record_activations(trainer, step)
        self.check_epochs(trainer, step)
        if trainer.tracker:
            trainer.tracker.log_metrics({f"diag/warnings/{kind}": n for kind, n in self.warnings.items()}, step=step)
        if trainer.state.position.epoch >= trainer.config.train.epochs or trainer.monitor.should_stop:
            self.save_figure(trainer)

    # ---- parts ------------------------------------------------------------------------------------------

    def record_activations(self, trainer: Trainer, step: int) -> None:
        if self.images is None:
            batch = next(iter(trainer.val_loader), None)
            if batch is None:
                return
            self.images = batch.image[:FIXED_IMAGES].to(trainer.device)
        stats = stage_activations(trainer.model, self.images, trainer.precision.autocast())
        self.record(trainer, step, {f"diag/act/{stage}/{name}": value
                                    for stage, figures in stats.items() for name, value in figures.items()})

    def check_epochs(self, trainer: Trainer, step: int) -> None:
        """The epoch rules on the validated epochs so far; each warns when it starts to hold."""
        train, history, config = trainer.config.train, trainer.state.history, self.config
        patience = config.patience_epochs
        if self.starts("overfitting", overfitting(history, train.monitor, train.monitor_mode, patience,
                                                  config.min_loss_drop)):
            self.warn("overfitting", step, overfitting_message(history, train.monitor, patience))
        if self.starts("underfitting", underfitting(history, self.warmup_epochs, patience, config.underfit_fraction)):
            self.warn("underfitting", step, underfitting_message(history, config.underfit_fraction))

    def starts(self, kind: str, holds: bool) -> bool:
        """True when rule `kind` holds now and did not at the last check: a rule warns once while it holds."""
        started = holds and kind not in self.active
        if holds:
            self.active.add(kind)
        else:
            self.active.discard(kind)
        return started

    def warn(self, kind: str, step: int, message: str) -> None:
        """Said now; counted, and the counts logged at the epoch's end (one value per key and step)."""
        self.warnings[kind] += 1
        log.warning("diagnostics, step %d: %s", step, message)

    def record(self, trainer: Trainer, step: int, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            self.series.setdefault(key, []).append((step, value))
        if trainer.tracker:
            trainer.tracker.log_metrics(figures, step=step)

    def save_figure(self, trainer: Trainer) -> None:
        path = trainer.checkpoints.folder / FIGURE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        diagnostics_figure(self.series, self.config.ratio_band, self.warnings).savefig(path, dpi=100)
        if trainer.tracker:
            trainer.tracker.log_artifact(path)


def overfitting_message(history: list[dict[str, float]], monitor: str, patience: int) -> str:
    then, now = history[-patience - 1], history[-1]
    return (f"{monitor} has been worse than {patience} epochs ago ({then[monitor]:.4g} -> {now[monitor]:.4g}) while "
            f"the train loss fell ({then[TRAIN_LOSS]:.4g} -> {now[TRAIN_LOSS]:.4g}): overfitting; try more "
            "augmentation or weight decay, a smaller model, or early stopping (train.early_stopping)")


def underfitting_message(history: list[dict[str, float]], fraction: float) -> str:
    return (f"after {len(history)} epochs the train loss ({history[-1][TRAIN_LOSS]:.4g}) is still {fraction:.0%} or "
            f"more of the first epoch's ({history[0][TRAIN_LOSS]:.4g}): underfitting; try a higher learning rate, "
            "a larger model, longer training or less regularisation")


def diagnostics_figure(series: dict[str, list[tuple[int, float]]], band: tuple[float, float],
                       warnings: dict[str, int]) -> Figure:
    """Four panels over the steps: gradient norm and update ratio per group (log scale; the ratio with the
    1e-3 line and the band), each stage's activation mean (solid) and std (dashed), and its dead fraction."""
    figure = Figure(figsize=(12, 8), layout="constrained")
    grads, ratios, acts, dead = figure.subplots(2, 2).flat
    plot_group(grads, series, "diag/grad_norm/", log_y=True)
    plot_group(ratios, series, "diag/update_ratio/", log_y=True)
    ratios.axhline(HEALTHY_RATIO, color="black", linestyle="--", linewidth=1, label=f"{HEALTHY_RATIO:g}")
    ratios.axhspan(*band, color="green", alpha=0.08)
    plot_group(acts, series, "diag/act/", suffix="/mean")
    for line in list(acts.get_lines()):
        stds = series.get(f"diag/act/{line.get_label()}/std", [])
        acts.plot([s for s, _ in stds], [v for _, v in stds], linestyle="--", color=line.get_color(), linewidth=1)
    plot_group(dead, series, "diag/act/", suffix="/dead_fraction")
    dead.set_ylim(-0.02, 1.02)
    titles = ["gradient norm (before clipping)", "update / weight ratio (healthy band shaded)",
              "stage output mean (solid) and std (dashed), fixed batch", "dead fraction (channels never > 0)"]
    for axes, title in zip((grads, ratios, acts, dead), titles):
        axes.set(xlabel="step", title=title)
        axes.grid(alpha=0.3)
        if axes.get_lines():
            axes.legend(fontsize="x-small")
    fired = ", ".join(f"{kind} {n}" for kind, n in warnings.items() if n)
    figure.suptitle(f"training diagnostics; warnings: {fired or 'none'}")
    return figure


def plot_group(axes, series: dict[str, list[tuple[int, float]]], prefix: str, suffix: str = "",
               log_y: bool = False) -> None:
    """One line per key `prefix` + <group> + `suffix`, labelled with the group."""
    for key, points in sorted(series.items()):
        if key.startswith(prefix) and key.endswith(suffix):
            finite = [(s, v) for s, v in points if math.isfinite(v) and (v > 0 or not log_y)]
            axes.plot([s for s, _ in finite], [v for _, v in finite], label=key[len(prefix):len(key) - len(suffix)],
                      linewidth=1.2, marker="." if len(finite) < 30 else None)
    if log_y and axes.get_lines():
        axes.set_yscale("log")
