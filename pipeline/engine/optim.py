"""The optimiser and the weight penalty from the config (the lr schedules are in pipeline/engine/schedules.py).

Names (`name`, `penalty`) are checked by the typed config (their Literal types), so nothing here repeats them.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.base import Backbone
from pipeline.config.schema import BackboneConfig, OptimizerConfig
from pipeline.config.typed import ConfigError
from pipeline.model import MultiTaskModel

NO_DECAY = ".no_decay"  # suffix of the group that holds a stage's (or the heads') biases and norm parameters


def build_optimizer(model: MultiTaskModel, config: OptimizerConfig, backbone: BackboneConfig) -> torch.optim.Optimizer:
    """Every parameter is in a group, frozen ones included: they get no gradient, hence no state, until thawed.

    The optimiser's own weight decay is the l2 penalty; with l1 or elastic_net it is 0 and `penalty` adds
    the term to the loss instead.
    """
    decay = config.weight_decay if config.penalty == "l2" else 0.0
    groups = parameter_groups(model, model.backbone, config.lr, backbone.stage_lr)
    if not config.decay_norm_and_bias:
        groups = split_no_decay(groups)
    if config.name == "sgd":
        # Nesterov needs momentum (torch rejects it otherwise): momentum 0 means plain SGD.
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=decay,
                               nesterov=config.nesterov and config.momentum > 0)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, eps=config.eps,
                                   weight_decay=decay)
    adam = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=decay)


def parameter_groups(model: nn.Module, backbone: Backbone, base_lr: float,
                     stage_lr: list[float] | None) -> list[dict]:
    """One optimiser group per backbone stage (lr = base_lr * its multiplier), one for everything else."""
    multipliers = stage_lr if stage_lr is not None else [1.0] * len(backbone.stages)
    if len(multipliers) != len(backbone.stages):
        raise ConfigError(f"model.backbone.stage_lr: expected {len(backbone.stages)} multipliers (one per stage, "
                          f"strides {backbone.strides}), got {len(multipliers)}")
    groups = [{"name": f"backbone.stages.{i}", "params": list(stage.parameters()), "lr": base_lr * m}
              for i, (stage, m) in enumerate(zip(backbone.stages, multipliers))]
    in_backbone = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in model.parameters() if id(p) not in in_backbone]
    groups.append({"name": "heads", "params": rest, "lr": base_lr})
    return [group for group in groups if group["params"]]


def decays(parameter: nn.Parameter) -> bool:
    """Whether a penalty applies by default: weights of >= 2 dimensions (conv kernels, linear matrices).

    Biases and normalisation scales/shifts (the 1-D tensors) are left out, as timm does: they are few,
    shrinking them barely limits capacity, and pulling a BatchNorm scale to zero switches its channel off.
    """
    return parameter.ndim > 1


def split_no_decay(groups: list[dict]) -> list[dict]:
    """Each group as two with its lr: `name` (decaying weights) and `name.no_decay` (weight_decay 0).

    Own code rather than timm's param_groups_weight_decay, which drops frozen parameters and our group names.
    The decaying part keeps the name, so `group_lr(optimizer, "heads")` still finds the heads' lr.
    """
    split = []
    for group in groups:
        split.append({**group, "params": [p for p in group["params"] if decays(p)]})
        split.append({**group, "name": group["name"] + NO_DECAY, "weight_decay": 0.0,
                      "params": [p for p in group["params"] if not decays(p)]})
    return [group for group in split if group["params"]]


def penalised_weights(model: nn.Module, config: OptimizerConfig) -> list[nn.Parameter]:
    """The trainable parameters the l1 / elastic-net term covers: the same rule as the optimiser's decay."""
    return [p for p in model.parameters() if p.requires_grad and (config.decay_norm_and_bias or decays(p))]


def penalty(model: nn.Module, config: OptimizerConfig) -> torch.Tensor | None:
    """The l1 or elastic-net term for the trainer to add to the loss; None when there is none to add.

    l2 returns None: the optimiser applies it as weight decay (see build_optimizer).
    """
    if config.penalty == "l2" or config.weight_decay == 0:
        return None
    weights = penalised_weights(model, config)
    if not weights:
        return None
    l1 = torch.stack([p.abs().sum() for p in weights]).sum()
    if config.penalty == "l1":
        return config.weight_decay * l1
    squares = torch.stack([p.pow(2).sum() for p in weights]).sum()  # elastic_net
    return config.weight_decay * (config.l1_ratio * l1 + (1 - config.l1_ratio) / 2 * squares)
