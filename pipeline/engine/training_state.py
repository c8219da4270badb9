"""Where the training loop stands: its position, the current epoch's running totals and the validated epochs.

The checkpoint holds all of it (keys "position", "epoch_totals", "history") so a resumed run continues where
the interrupted one was, mid-epoch included.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


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
    seconds: float = 0.0          # seconds of the optimiser steps, data wait included (validation, hooks not)

    def add(self, values: dict[str, float]) -> None:
        """One trained step's values."""
        self.steps += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        # Per-step values are logged under their own keys at every step; the epoch's means get an "epoch/" prefix.
        return {f"epoch/{key}": total / max(self.steps, 1) for key, total in self.sums.items() if key != "lr"}


@dataclass
class TrainingState:
    """The loop's own state; the trainer's hooks read it."""
    position: Position = field(default_factory=Position)
    totals: EpochTotals = field(default_factory=EpochTotals)
    history: list[dict[str, float]] = field(default_factory=list)     # one entry per validated epoch
    # Not checkpointed. Only the last step's values are kept: every step's are in the run's metrics.jsonl, and a
    # list grown each step would grow every checkpoint with it.
    last_step: dict[str, float] = field(default_factory=dict)

    def end_step(self, values: dict[str, float]) -> None:
        """An optimiser step is done: it counts in the position, and in the totals when it trained (values
        are {} for a skipped step)."""
        self.position = dataclasses.replace(self.position, step_in_epoch=self.position.step_in_epoch + 1,
                                            global_step=self.position.global_step + 1)
        if values:
            self.totals.add(values)
            self.last_step = values

    def end_epoch(self, logs: dict[str, float]) -> None:
        """The validated epoch's figures join the history; the position moves to the next epoch's start."""
        self.history.append(logs)
        self.position = dataclasses.replace(self.position, epoch=self.position.epoch + 1, step_in_epoch=0)
