"""The monitored validation metric (train.monitor): picks best.pt and drives early stopping."""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config.typed import ConfigError


@dataclass
class Monitor:
    metric: str | None          # a logged key, e.g. "val/seg/mIoU"; None: no best checkpoint, no early stopping
    mode: str = "max"           # max | min
    min_delta: float = 0.0
    patience: int = 0           # early stopping after this many epochs without improvement; 0: never
    best: float | None = None
    epochs_without_improvement: int = 0

    def update(self, logs: dict[str, float]) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        value = self.value(logs)
        if value is None or math.isnan(value):
            if value is not None:
                self.epochs_without_improvement += 1
            return False
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.epochs_without_improvement = value, 0
            return True
        self.epochs_without_improvement += 1
        return False

    def value(self, logs: dict[str, float]) -> float | None:
        if self.metric is None:
            return None
        if self.metric not in logs:
            raise ConfigError(f"train.monitor: {self.metric!r} is not a logged metric; "
                              f"choose one of: {', '.join(sorted(logs))}")
        return logs[self.metric]

    def __post_init__(self) -> None:
        if self.patience > 0 and self.metric is None:
            raise ConfigError("train.early_stopping.patience: early stopping needs the metric to watch; "
                              "set train.monitor (e.g. val/seg/mIoU)")

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.epochs_without_improvement = state["best"], state["epochs_without_improvement"]
