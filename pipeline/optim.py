"""The optimiser and the weight penalty from the config (the lr schedules are in pipeline/schedules.py)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config import BackboneConfig, OptimizerConfig
from pipeline.model import MultiTaskModel
from pipeline.transfer import parameter_groups
from pipeline.typed_config import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
PENALTIES = ("l2", "l1", "elastic_net")


def check_optimizer(config: OptimizerConfig) -> None:
    if config.name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer.name: expected one of {', '.join(OPTIMIZERS)}, got {config.name!r}")
    if config.penalty not in PENALTIES:
        raise ConfigError(f"train.optimizer.penalty: expected one of {', '.join(PENALTIES)}, got {config.penalty!r}")
    # Ranges (weight_decay >= 0, l1_ratio in [0, 1]) are checked when the config is parsed: config_ranges.py


def build_optimizer(model: MultiTaskModel, config: OptimizerConfig, backbone: BackboneConfig) -> torch.optim.Optimizer:
    """Every parameter is in a group, frozen ones included: they get no gradient, hence no state, until thawed.

    The optimiser's own weight decay is the l2 penalty; with l1 or elastic_net it is 0 and `penalty` adds
    the term to the loss instead.
    """
    check_optimizer(config)
    groups = parameter_groups(model, model.backbone, config.lr, backbone.stage_lr)
    decay = config.weight_decay if config.penalty == "l2" else 0.0
    if config.name == "sgd":
        # Nesterov needs momentum (torch rejects it otherwise): momentum 0 means plain SGD.
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=decay,
                               nesterov=config.nesterov and config.momentum > 0)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, eps=config.eps,
                                   weight_decay=decay)
    adam = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=decay)


def decaying_weights(model: nn.Module) -> list[nn.Parameter]:
    """Trainable weights of >= 2 dimensions (conv kernels, linear matrices).

    Biases and normalisation scales/shifts (the 1-D tensors) are left out, as is usual: they are few, shrinking
    them barely limits capacity, and pulling a BatchNorm scale to zero switches its channel off.
    """
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def penalty(model: nn.Module, config: OptimizerConfig) -> torch.Tensor | None:
    """The l1 or elastic-net term for the trainer to add to the loss; None when there is none to add.

    l2 returns None: the optimiser applies it as weight decay (see build_optimizer).
    """
    weights = decaying_weights(model)
    if config.penalty == "l2" or config.weight_decay == 0 or not weights:
        return None
    l1 = torch.stack([p.abs().sum() for p in weights]).sum()
    if config.penalty == "l1":
        return config.weight_decay * l1
    if config.penalty == "elastic_net":
        squares = torch.stack([p.pow(2).sum() for p in weights]).sum()
        return config.weight_decay * (config.l1_ratio * l1 + (1 - config.l1_ratio) / 2 * squares)
    raise ConfigError(f"train.optimizer.penalty: expected one of {', '.join(PENALTIES)}, got {config.penalty!r}")
