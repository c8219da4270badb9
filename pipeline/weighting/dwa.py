"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): a task whose loss fell less last epoch weighs more.

lambda_t = T exp(w_t / temperature) / sum_i exp(w_i / temperature),  w_t = L_t(e-1) / L_t(e-2)  (epoch means),
times the task's static weight (all 1: the paper's formula). The first two epochs use the static weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config.typed import ConfigError
from pipeline.weighting.base import Weighting


class DWA(Weighting):
    @dataclass
    class Options:
        temperature: float = 2.0        # larger: softer, closer to equal weights

    def __init__(self, tasks: list[str], static_weights: dict[str, float], options: Options | None = None) -> None:
        super().__init__(tasks, static_weights, options)
        if self.options.temperature <= 0:
            raise ConfigError(f"model.weighting.temperature: expected > 0, got {self.options.temperature}")
        self.register_buffer("history", torch.zeros(2, len(tasks)))    # epoch mean losses: [e-2, e-1]
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def epoch_end(self, task_losses: dict[str, float]) -> None:
        self.history.copy_(torch.stack([self.history[1], self.stack(task_losses)]))
        self.epochs += 1

    def lambdas(self) -> Tensor:
        if self.epochs < 2:
            return self.static
        before, last = self.history
        # A task with no labels all epoch (mean 0) gets the neutral rate instead of 0/0.
        rate = torch.where(before > 0, last / before, torch.ones_like(last))
        return self.static * len(self.tasks) * torch.softmax(rate / self.options.temperature, dim=0)
