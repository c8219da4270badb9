"""The trainer hook that feeds a tune trial's per-epoch validation metric to Optuna.

After each validated epoch (the epoch's checkpoint, with its metrics, is written by then: this hook runs after
the trainer's own) it reports the metric to the trial and, when the study's pruner says so, raises
optuna.TrialPruned out of the training: the run's folder keeps the checkpoint of its last epoch, and the tune
job marks the run pruned.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import optuna

from pipeline.config.typed import ConfigError
from pipeline.engine.hooks import EpochEnd, Hook

if TYPE_CHECKING:
    from pipeline.engine.trainer import Trainer


class MetricNotLogged(ConfigError):
    """The searched metric is not among an epoch's logged values: no trial of the study can be judged."""


class TrialReporter(Hook):
    """Reports `metric` of every epoch to `trial`; remembers the values and the trial's MLflow run id."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str) -> None:
        self.trial, self.metric, self.direction = trial, metric, direction
        self.values: list[float] = []       # one per validated epoch
        self.run_id: str | None = None      # the trial's MLflow run, known once the trainer is built
        self.pruned_at: int | None = None   # the epoch (1-based) after which the pruner stopped the run

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.run_id = trainer.run_id

    def after_epoch(self, trainer: Trainer, end: EpochEnd) -> None:
        if self.metric not in end.logs:
            raise MetricNotLogged(f"--metric: {self.metric!r} is not a logged metric; choose one of: "
                                  f"{', '.join(sorted(k for k in end.logs if k.startswith('val/')))}")
        epoch = trainer.state.position.epoch       # the epochs done, as the position is at the next one
        value = float(end.logs[self.metric])
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch}: "
                                     f"{self.metric} = {value:.4g}")

    def best(self) -> float:
        """The trial's value: the metric's best epoch (NaN epochs left out; NaN when every epoch was)."""
        finite = [value for value in self.values if not math.isnan(value)]
        if not finite:
            return math.nan
        return max(finite) if self.direction == "maximize" else min(finite)
