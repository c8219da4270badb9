"""Learning-rate schedules: linear warm-up, then one decay shape; stepped once per optimiser step.

Every schedule multiplies each parameter group's own base lr by one factor, so the per-stage
multipliers of `pipeline.engine.optim.parameter_groups` hold throughout. Epoch quantities in the config
(warm-up, step size, milestones) are converted to optimiser steps with `steps_per_epoch`.

The trainer uses one interface, `Schedule`: `step()` after every optimiser step, `epoch_end(value)`
after each validation (only plateau reads the value), and `state_dict()` / `load_state_dict()` for an
exact resume. Step-only schedules are a torch `LambdaLR` over a closed-form factor; plateau is its own
small class.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from pipeline.config.schema import SchedulerConfig, TrainConfig
from pipeline.config.typed import ConfigError

MONITOR_MODES = ("max", "min")


class Schedule(Protocol):
    def step(self) -> None: ...
    def epoch_end(self, value: float | None) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def get_last_lr(self) -> list[float]: ...


@dataclass(frozen=True)
class Steps:
    """The config's epoch quantities, in optimiser steps."""
    per_epoch: int
    warmup: int      # at least 1: step 0 already runs at 1 / warmup of the lr
    total: int       # where cosine and linear reach their floor


def to_steps(config: SchedulerConfig, steps_per_epoch: int, epochs: int) -> Steps:
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    return Steps(per_epoch=steps_per_epoch, warmup=warmup, total=max(warmup + 1, steps_per_epoch * epochs))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear ramp: step 0 (the first optimiser step) runs at 1 / warmup_steps, step warmup_steps - 1 at 1."""
    return min(1.0, (step + 1) / warmup_steps)


def decay_progress(step: int, steps: Steps) -> float:
    """0 at the end of warm-up, 1 after the last step of training (and beyond)."""
    return min(1.0, max(0.0, (step - steps.warmup) / (steps.total - steps.warmup)))


# The decay shapes, each a factor of the step (0-based index of the optimiser step the lr is for). The
# warm-up multiplies them; cosine and linear only start after it, epoch boundaries count from step 0.

def constant(step: int, config: SchedulerConfig, steps: Steps) -> float:
    return 1.0


def cosine(step: int, config: SchedulerConfig, steps: Steps) -> float:
    floor = config.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay_progress(step, steps)))


def linear(step: int, config: SchedulerConfig, steps: Steps) -> float:
    floor = config.min_lr_ratio
    return floor + (1.0 - floor) * (1.0 - decay_progress(step, steps))


def step_decay(step: int, config: SchedulerConfig, steps: Steps) -> float:
    every = max(1, round(config.step_epochs * steps.per_epoch))
    return config.gamma ** (step // every)


def multistep(step: int, config: SchedulerConfig, steps: Steps) -> float:
    passed = sum(step >= round(epoch * steps.per_epoch) for epoch in config.milestones)
    return config.gamma ** passed


def inverse_sqrt(step: int, config: SchedulerConfig, steps: Steps) -> float:
    """sqrt(warmup / n) for the n-th step (1-based) after warm-up: 1 where the ramp ends, then decaying."""
    return math.sqrt(steps.warmup / max(step + 1, steps.warmup))


SHAPES: dict[str, Callable[[int, SchedulerConfig, Steps], float]] = {
    "constant": constant, "cosine": cosine, "linear": linear, "step": step_decay,
    "multistep": multistep, "inverse_sqrt": inverse_sqrt,
}


class StepSchedule(LambdaLR):
    """A schedule that depends on the step alone: torch's LambdaLR, whose state is the step count and base lrs."""

    def epoch_end(self, value: float | None) -> None:
        """Nothing to do: the metric does not move this schedule."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # The lrs also live in the optimiser's state; set them here so a resume is exact whether the
        # optimiser's state is loaded before this, after it, or not at all.
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr(), strict=True):
            group["lr"] = lr


@dataclass
class PlateauState:
    steps: int = 0                  # optimiser steps taken (drives the warm-up)
    decays: int = 0                 # lr = base lr x warm-up x gamma ** decays
    best: float | None = None
    bad_epochs: int = 0             # epochs since the last improvement (or decay)


class PlateauSchedule:
    """Warm-up, then x gamma each time the monitored metric has not improved for `patience` epochs in a row.

    Own class rather than ReduceLROnPlateau: that one multiplies the optimiser's lr in place, which a
    warm-up scheduler would overwrite on its next step. "Improved" is strictly better than the best so
    far (higher for mode max, lower for min); a NaN never improves. After a decay the count restarts.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, gamma: float, patience: int,
                 mode: str = "max"):
        if mode not in MONITOR_MODES:
            raise ConfigError(f"train.monitor_mode: expected one of {', '.join(MONITOR_MODES)}, got {mode!r}")
        self.optimizer = optimizer
        self.warmup_steps, self.gamma, self.patience, self.mode = warmup_steps, gamma, patience, mode
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.state = PlateauState()
        self._apply()

    def step(self) -> None:
        self.state.steps += 1
        self._apply()

    def epoch_end(self, value: float | None) -> None:
        if value is None:
            raise ConfigError("train.scheduler.name: plateau needs the monitored metric at every epoch end, got "
                              "None: set train.monitor (e.g. val/cls/accuracy) and train.monitor_mode")
        state = self.state
        if self._improves(float(value)):
            state.best, state.bad_epochs = float(value), 0
            return
        state.bad_epochs += 1
        if state.bad_epochs >= self.patience:
            state.decays, state.bad_epochs = state.decays + 1, 0
            self._apply()  # now, not at the next step: the next epoch's first step already uses the decayed lr

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.state.best is None:
            return True
        return value > self.state.best if self.mode == "max" else value < self.state.best

    def get_last_lr(self) -> list[float]:
        factor = warmup_factor(self.state.steps, self.warmup_steps) * self.gamma ** self.state.decays
        return [base * factor for base in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr(), strict=True):
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only, so a checkpoint loads with torch.load(weights_only=True)."""
        return {"base_lrs": list(self.base_lrs), **dataclasses.asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.base_lrs = list(state.pop("base_lrs"))
        self.state = PlateauState(**state)
        self._apply()


def check_scheduler(config: SchedulerConfig) -> None:
    """The numeric fields' ranges; the field names are those of the YAML file."""
    checks = [
        ("name", config.name in SHAPES or config.name == "plateau", f"one of {', '.join([*SHAPES, 'plateau'])}"),
        ("warmup_epochs", config.warmup_epochs >= 0, ">= 0"),
        ("min_lr_ratio", 0 <= config.min_lr_ratio <= 1, "0 <= min_lr_ratio <= 1"),
        ("step_epochs", config.step_epochs > 0, "> 0"),
        ("milestones", all(m >= 0 for m in config.milestones), "epochs >= 0"),
        ("gamma", 0 < config.gamma <= 1, "0 < gamma <= 1"),
        ("patience", config.patience >= 0, ">= 0"),
    ]
    for field_name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"train.scheduler.{field_name}: expected {expected}, "
                              f"got {getattr(config, field_name)!r}")


def validate_scheduler(train: TrainConfig) -> None:
    """Call when training starts, so a plateau schedule without a monitored metric fails before the first epoch."""
    check_scheduler(train.scheduler)
    if train.scheduler.name == "plateau" and not train.monitor:
        raise ConfigError("train.scheduler.name: plateau decays when train.monitor stops improving, but "
                          "train.monitor is not set (e.g. train.monitor: val/cls/accuracy)")


def build_scheduler(optimizer: torch.optim.Optimizer, config: SchedulerConfig, steps_per_epoch: int, epochs: int,
                    monitor_mode: str = "max") -> Schedule:
    """`monitor_mode` (train.monitor_mode) tells plateau whether higher or lower values are better."""
    check_scheduler(config)
    if steps_per_epoch < 1:
        raise ValueError(f"build_scheduler: steps_per_epoch must be >= 1 (is the training set empty?), "
                         f"got {steps_per_epoch}")
    steps = to_steps(config, steps_per_epoch, epochs)
    if config.name == "plateau":
        return PlateauSchedule(optimizer, steps.warmup, config.gamma, config.patience, monitor_mode)
    shape = SHAPES[config.name]
    return StepSchedule(optimizer, lambda step: warmup_factor(step, steps.warmup) * shape(step, config, steps))
