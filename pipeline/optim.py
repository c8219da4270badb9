"""Optimiser and learning-rate schedule from the config."""
from __future__ import annotations

import math

import torch

from pipeline.config import BackboneConfig, OptimizerConfig, SchedulerConfig
from pipeline.model import MultiTaskModel
from pipeline.transfer import parameter_groups


def build_optimizer(model: MultiTaskModel, config: OptimizerConfig, backbone: BackboneConfig) -> torch.optim.Optimizer:
    """Every parameter is in a group, frozen ones included: they get no gradient, hence no state, until thawed."""
    groups = parameter_groups(model, model.backbone, config.lr, backbone.stage_lr)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, config: SchedulerConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero (or constant); stepped once per optimiser step.

    The factor scales each group's own learning rate, so per-stage multipliers hold throughout.
    """
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, steps_per_epoch * epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.name == "constant":
            return 1.0
        progress = (step - warmup) / (total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
