"""The layers of a model whose shape is a contract rather than a width choice: the backbone's first
convolution (it reads the image's channels) and each head's output layers (they write the classes, the boxes'
per-class scores, or the image's channels). Quantisation keeps them in full precision (as XNOR-Net and TWN
do) and pruning must not remove their channels.

Found by asking the heads rather than by a list per head type: each head is built a second time for one more
class and one more image channel, and the parameters whose shapes change are the ones those numbers decide.
(pruning.output_layers answers a narrower question from the traced graph, without the config: which layers'
output channels a head's outputs are made of.)"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from heads import registry as head_registry
from pipeline.config.schema import ModelConfig

if TYPE_CHECKING:   # pipeline.model builds models through this package: no import at run time
    from pipeline.model import MultiTaskModel


def contract_layers(model: MultiTaskModel, config: ModelConfig, num_classes: int, in_channels: int) -> list[str]:
    """Module names (as in model.named_modules()) of the first backbone convolution and every head's output
    layers."""
    names = [f"backbone.{first_convolution(model.backbone)}"]
    for task, head_config in config.heads.items():
        with torch.device("meta"):      # shapes only: nothing is allocated or initialised
            wider = head_registry.build(head_config.type, model.backbone.channels, model.backbone.strides,
                                        num_classes + 1, head_config.options, image_channels=in_channels + 1)
        shapes = {name: p.shape for name, p in wider.named_parameters()}
        changed = {name.rsplit(".", 1)[0] for name, p in model.heads[task].named_parameters()
                   if shapes.get(name) != p.shape}
        names += [f"heads.{task}.{name}" for name in sorted(changed)]
    return names


def first_convolution(module: nn.Module) -> str:
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            return name
    raise ValueError(f"{type(module).__name__} has no nn.Conv2d")
