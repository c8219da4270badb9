"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): a learned log-variance s_t = log sigma_t^2 per task.

regression:     0.5 exp(-s) L + 0.5 s   (Gaussian likelihood)
classification:     exp(-s) L + 0.5 s   (softmax likelihood with temperature sigma^2)

At its optimum exp(-s) is proportional to 1 / L: each task's weight follows its inverse loss scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.config.typed import ConfigError
from pipeline.weighting.base import Weighting, average_gradients, require_positive
from pipeline.weighting.context import BackwardContext


class Uncertainty(Weighting):
    @dataclass
    class Options:
        forms: dict[str, Literal["regression", "classification"]] = field(default_factory=dict)  # default regression
        lr: float | None = None         # learning rate of the log-variances (None: the optimiser's base lr)

    def __init__(self, tasks: list[str], static_weights: dict[str, float], options: Options | None = None) -> None:
        super().__init__(tasks, static_weights, options)
        unknown = [task for task in self.options.forms if task not in tasks]
        if unknown:
            raise ConfigError(f"model.weighting.forms.{unknown[0]}: no such task; tasks are {', '.join(tasks)}")
        require_positive(self.static, tasks, "uncertainty")
        forms = [self.options.forms.get(task, "regression") for task in tasks]
        factor = torch.tensor([1.0 if form == "classification" else 0.5 for form in forms])
        self.register_buffer("factor", factor, persistent=False)
        # Start where the static weights are: factor * exp(-s) = lambda.
        self.log_variance = nn.Parameter(torch.log(factor / self.static))

    def objective(self, losses: Tensor) -> Tensor:
        # A task without labels in this batch (loss exactly 0) must not have its s pulled down by the 0.5 s term.
        present = (losses.detach() != 0).float()
        weighted = self.factor * torch.exp(-self.log_variance) * losses
        return (weighted + 0.5 * present * self.log_variance).sum()

    def finish(self, ctx: BackwardContext) -> None:
        # The log-variances are outside the DDP-wrapped model: average their gradients here.
        average_gradients([self.log_variance], ctx.dist)

    def lambdas(self) -> Tensor:
        return (self.factor * torch.exp(-self.log_variance)).detach()

