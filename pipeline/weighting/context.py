"""What a weighting strategy needs to know about one optimiser step: which parameters are shared, how the
losses are scaled (AMP) and split (gradient accumulation), and who the other ranks are."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from pipeline.runtime.distributed import DistInfo


def _identity(tensor: Tensor) -> Tensor:
    return tensor


@dataclass
class BackwardContext:
    shared: list[nn.Parameter]                  # trainable backbone parameters (PCGrad's surgery set)
    last_shared: list[nn.Parameter]             # the last shared layer's parameters (GradNorm's W)
    task_specific: list[nn.Parameter]           # every other trainable model parameter (the heads)
    scale: Callable[[Tensor], Tensor] = _identity   # GradScaler.scale; identity without fp16
    loss_scale: float = 1.0                     # the factor `scale` multiplies by: divide by it to unscale
    micro_batches: int = 1                      # each micro-batch's loss is divided by this
    dist: DistInfo = field(default_factory=DistInfo)


def backward_context(model: nn.Module, scaler: torch.amp.GradScaler, micro_batches: int,
                     dist: DistInfo) -> BackwardContext:
    """The context of one optimiser step of `model` (anything with `.backbone`: the shared part).

    Build it at every step: the trainable set changes when stages are frozen or thawed.
    """
    shared = [p for p in model.backbone.parameters() if p.requires_grad]
    in_backbone = {id(p) for p in model.backbone.parameters()}
    task_specific = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    return BackwardContext(shared, last_layer_parameters(model.backbone), task_specific, scaler.scale,
                           scaler.get_scale(), micro_batches, dist)


def last_layer_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the last layer with a weight matrix or kernel (a conv or linear layer),
    in registration order, which is forward order for the sequential stages backbones are made of."""
    for layer in reversed(list(module.modules())):
        own = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        if any(p.ndim > 1 for p in own):
            return own
    return []
