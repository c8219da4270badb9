"""Transfer-learning controls: which backbone stages train, and at what learning rate.

Frozen stages keep their weights and their BatchNorm statistics. Their
parameters stay in the optimiser (so progressive unfreezing needs no
rebuild) but get no gradient, so the optimiser creates no state for them.
"""
from __future__ import annotations

from torch import nn

from backbones.base import Backbone
from pipeline.config import BackboneConfig
from pipeline.typed_config import ConfigError


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
