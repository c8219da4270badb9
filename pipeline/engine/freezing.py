"""Transfer-learning controls: which backbone stages train (their learning rates: pipeline/engine/optim.py).

Frozen stages keep their weights and their BatchNorm statistics. Their
parameters stay in the optimiser (so progressive unfreezing needs no
rebuild) but get no gradient, so the optimiser creates no state for them.
"""
from __future__ import annotations

from torch import nn

from backbones.base import Backbone
from pipeline.config.schema import BackboneConfig
from pipeline.config.typed import ConfigError


def frozen_stages(config: BackboneConfig, num_stages: int, epoch: int) -> int:
    """How many of the first stages are frozen during `epoch` (0-based)."""
    if config.freeze == "none":
        initial = 0
    elif config.freeze == "all":
        initial = num_stages
    elif 0 <= config.freeze <= num_stages:
        initial = config.freeze
    else:
        raise ConfigError(f"model.backbone.freeze: expected none, all or 0..{num_stages} stages, got {config.freeze}")
    thawed = epoch // config.unfreeze_every if config.unfreeze_every > 0 else 0
    return max(0, initial - thawed)


def set_frozen(backbone: Backbone, count: int) -> None:
    """Freeze the first `count` stages' parameters; unfreeze the rest."""
    for index, stage in enumerate(backbone.stages):
        for parameter in stage.parameters():
            parameter.requires_grad_(index >= count)


def freeze_batchnorm_statistics(backbone: Backbone, count: int) -> None:
    """Call after `model.train()`: BatchNorm in frozen stages normalises with, and keeps, its running statistics."""
    for stage in list(backbone.stages)[:count]:
        for module in stage.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
