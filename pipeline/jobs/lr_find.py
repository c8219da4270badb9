"""`python -m pipeline lr-find CONFIG [--start 1e-7] [--end 10] [--steps 100] [key=value ...]`: the
learning-rate range test (pipeline/tuning/lr_range.py). The model, data, optimiser and optimiser step are
built as training builds them (the Trainer itself: stage learning rates, loss weighting, AMP, clipping); its
schedule is replaced by an exponential sweep of train.optimizer.lr from --start to --end over --steps steps,
stopped early once the smoothed loss passes --diverge times its lowest. Per-stage multipliers
(model.backbone.stage_lr) scale the sweep as they scale training's lr.

It is an MLflow run of its own in the config's experiment (the curve as metrics, lr_find.png and
lr_find.csv as artifacts), with its files in <output_dir>/<name>/lr-find-<run id>/. The weights are
discarded: nothing else is written, no other run is touched.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
import os
from pathlib import Path

from torch.optim.lr_scheduler import LambdaLR

from backbones.weights import WeightsFileError
from datasets.summary import summarize
from pipeline.config.schema import Config, config_to_dict, load_config
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.data_check.guard import require_trainable
from pipeline.engine.data import build_splits, ensure_shapes, eval_loader, train_loader
from pipeline.engine.initial_weights import load_initial_weights
from pipeline.engine.optimizer_step import group_lr
from pipeline.engine.trainer import DataInfo, Trainer
from pipeline.jobs.command import Command
from pipeline.jobs.train import load_teacher
from pipeline.model import build_model
from pipeline.runtime.device import select_device, select_precision
from pipeline.runtime.seeding import seed_everything, set_deterministic
from pipeline.tracking.run_artifacts import with_local_weights
from pipeline.tracking.tracker import Tracker, resolve_uri
from pipeline.tuning.lr_range import Curve, Suggestion, curve_figure, lr_at, suggest

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Sweep:
    start: float = 1e-7
    end: float = 10.0
    steps: int = 100
    smoothing: float = 0.98
    diverge: float = 4.0

    def check(self) -> None:
        if not 0 < self.start < self.end:
            raise ConfigError(f"--start, --end: expected 0 < start < end, got {self.start:g} and {self.end:g}")
        if self.steps < 2:
            raise ConfigError(f"--steps: expected 2 or more, got {self.steps}")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"--smoothing: expected a moving average's beta in [0, 1), got {self.smoothing:g}")
        if not self.diverge > 1:
            raise ConfigError(f"--diverge: expected a factor > 1, got {self.diverge:g}")


@dataclasses.dataclass
class RangeTestResult:
    curve: Curve
    suggestion: Suggestion
    run_id: str
    folder: Path            # lr_find.png, lr_find.csv, metrics.jsonl

    @property
    def figure(self) -> Path:
        return self.folder / "lr_find.png"


def run_lr_find(config: Config, sweep: Sweep = Sweep()) -> RangeTestResult:
    sweep.check()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("lr-find runs in one process; run it without torchrun")
    trainer = build_trainer(config)
    tracker = Tracker(dataclasses.replace(config.tracking, run_name=f"{config.name} lr-find"))
    run_id = tracker.start({**config_to_dict(config), "lr_find": dataclasses.asdict(sweep)},
                           tags={"mlflow.source.name": "python -m pipeline lr-find", "pipeline.lr_find": "true"})
    folder = Path(config.output_dir) / config.name / f"lr-find-{run_id}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tracker.keep_local_copy(folder / "metrics.jsonl")
        curve = sweep_lr(trainer, sweep, tracker)
        suggestion = suggest(curve)
        tracker.log_metrics({"lr_find/suggested_lr": suggestion.steepest,
                             "lr_find/min_loss_lr_div10": suggestion.min_loss_tenth}, step=len(curve.lrs))
        tracker.log_figure(curve_figure(curve, suggestion), "lr_find.png")
        table = folder / "lr_find.csv"
        table.write_text("step,lr,loss,smoothed_loss\n" + "".join(
            f"{i + 1},{lr:.6e},{loss:.6g},{smooth:.6g}\n"
            for i, (lr, loss, smooth) in enumerate(zip(curve.lrs, curve.losses, curve.smoothed))))
        tracker.log_artifact(table)
    except BaseException as error:
        tracker.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end("FINISHED")
    return RangeTestResult(curve, suggestion, run_id, folder)


def build_trainer(config: Config) -> Trainer:
    """The model, data and Trainer as pipeline/jobs/train.py's _train builds them for a new run (no resume,
    no tracker, one process). Its checkpoint folder is never written: no hook but the training mode runs."""
    set_deterministic(config.train.deterministic)
    seed_everything(config.seed)
    ensure_shapes(config.data)
    splits = build_splits(config.data)
    require_trainable(splits, config)
    uri = resolve_uri(config.tracking)
    model = build_model(with_local_weights(config.model, uri), num_classes=len(splits.class_names),
                        in_channels=config.data.channels)
    summary = summarize(splits.train, config.data.image_size, config.data.resize)
    for head in model.heads.values():
        head.fit_data(summary)
    if config.model.init:
        load_initial_weights(model, config.model.init, splits.class_names, uri)
    device = select_device(config.train.device)
    distiller = load_teacher(config, model, splits.class_names, device)
    return Trainer(config, model, train_loader(splits.train, config.data, config.seed),
                   eval_loader(splits.val, config.data, config.seed),
                   DataInfo(splits.class_names, splits.category_ids, splits.image_policy.to_dict()), device,
                   select_precision(config.train.amp, device), Path(config.output_dir) / config.name / "lr-find",
                   distiller=distiller)


def sweep_lr(trainer: Trainer, sweep: Sweep, tracker: Tracker) -> Curve:
    """Optimiser steps at exponentially growing lr (each parameter group keeps its ratio to
    train.optimizer.lr), through as many epochs of the training data as the steps need."""
    base = trainer.config.train.optimizer.lr
    # The training schedule's base lrs (before its warm-up scaled them; both kinds of schedule keep them) are
    # each group's own: the sweep replaces the schedule, each group at its base lr x the sweep's lr / base.
    for group, group_base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs, strict=True):
        group["initial_lr"] = group_base
    trainer.step.scheduler = LambdaLR(trainer.optimizer,
                                      lambda step: lr_at(step, sweep.steps, sweep.start, sweep.end) / base)
    trainer.train_mode.before_epoch(trainer, 0)      # training mode, with the first epoch's frozen stages
    curve = Curve(smoothing=sweep.smoothing, diverge=sweep.diverge)
    step = 0
    for epoch in itertools.count():
        trainer.start_epoch(epoch)
        batches = iter(trainer.train_loader)
        for _ in range(trainer.steps_per_epoch):
            lr = group_lr(trainer.optimizer, "heads")
            values = trainer.train_step(batches)
            loss = values.get("train/loss", float("nan"))      # {}: a non-finite step, skipped: diverged
            going = curve.add(lr, loss)
            step += 1
            if math.isfinite(loss):
                tracker.log_metrics({"lr_find/lr": lr, "lr_find/loss": loss,
                                     "lr_find/smoothed_loss": curve.smoothed[-1]}, step=step)
            if not going or step == sweep.steps:
                if curve.stopped_early:
                    log.info("lr range test: stopped at lr %.3g (step %d of %d): the loss diverged", lr, step,
                             sweep.steps)
                return curve
    raise AssertionError("unreachable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.batch_size=32")
    defaults = Sweep()
    parser.add_argument("--start", type=float, default=defaults.start, help=f"first lr (default {defaults.start:g})")
    parser.add_argument("--end", type=float, default=defaults.end, help=f"last lr (default {defaults.end:g})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"optimiser steps of the sweep (default {defaults.steps})")
    parser.add_argument("--smoothing", type=float, default=defaults.smoothing,
                        help=f"beta of the loss's moving average (default {defaults.smoothing:g}; 0: none)")
    parser.add_argument("--diverge", type=float, default=defaults.diverge,
                        help=f"stop once the smoothed loss passes this times its lowest (default {defaults.diverge:g})")


def run(args: argparse.Namespace) -> str:
    sweep = Sweep(args.start, args.end, args.steps, args.smoothing, args.diverge)
    sweep.check()     # before the config's data is read
    result = run_lr_find(load_config(args.config, args.overrides), sweep)
    curve, suggestion = result.curve, result.suggestion
    ended = (f"stopped at lr {curve.lrs[-1]:.3g}: the loss diverged" if curve.stopped_early
             else f"up to lr {curve.lrs[-1]:.3g}")
    return (f"lr range test: {len(curve.lrs)} steps from lr {curve.lrs[0]:.3g}, {ended}\n"
            f"suggested lr (steepest descent of the smoothed loss): {suggestion.steepest:.3g}\n"
            f"lr of the lowest smoothed loss / 10: {suggestion.min_loss_tenth:.3g}\n"
            f"plot: {result.figure}  (MLflow run {result.run_id})\n"
            f"train with it: python -m pipeline train {args.config} train.optimizer.lr={suggestion.steepest:.3g}")


COMMAND = Command("lr-find", "learning-rate range test: loss against an exponentially growing lr, with a "
                             "suggested lr", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, DataCheckError, WeightsFileError), takes_overrides=True)
