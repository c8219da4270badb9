"""One shared backbone, a dict of named task heads."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import backbones
from heads import registry as head_registry
from heads.base import Head
from pipeline.compression.output_layers import contract_layers
from pipeline.compression.weight_quantisers import quantise_weights
from pipeline.config.schema import ModelConfig


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: backbones.Backbone, heads: dict[str, Head]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        # Here rather than in build_model, so every way of assembling a model (tests too) gets the indices.
        for task, head in heads.items():
            if head.needs_pool_indices:
                enable_pool_indices(backbone, task)

    def forward(self, image: Tensor) -> dict[str, Any]:
        """`image`: [B,C,H,W] in [0,1], C the backbone's in_channels. Returns each head's raw outputs by task name."""
        features = self.backbone(image)
        outputs = {}
        for task, head in self.heads.items():
            corrupted = head.corrupt(image) if self.training else None
            if corrupted is None:
                outputs[task] = head(features, image)
            else:  # a denoising head sees features of its own corrupted copy; the others stay clean
                outputs[task] = head(self.backbone(corrupted), corrupted)
        return outputs


def enable_pool_indices(backbone: backbones.Backbone, task: str) -> None:
    """An unpooling head (SegNet) needs the backbone's max-pool indices: make its forward record them."""
    try:
        backbone.record_pool_indices()
    except ValueError as error:
        raise ValueError(f"head {task!r} unpools with max-pool indices, but: {error}") from None


def adopt_backbone(backbone: backbones.Backbone, heads: dict[str, Head]) -> None:
    """Each head takes what it starts from out of the backbone (heads/base.py); then the backbone's classifier
    layers are dropped, which would otherwise ride along in every copy and pickle of the model (0.5 GB for VGG)."""
    for task, head in heads.items():
        try:
            head.adopt_backbone(backbone)
        except ValueError as error:
            raise ValueError(f"model.heads.{task}.{error}") from None
    backbone.classifier_fc = None


def build_model(config: ModelConfig, num_classes: int, in_channels: int = 3) -> MultiTaskModel:
    """`in_channels`: channels of the input images (config.data.channels); the backbone is adapted to them and
    the heads that read or output images (unet, ae, dae, vae) use them."""
    backbone = backbones.build(config.backbone.name, pretrained=config.backbone.pretrained, in_channels=in_channels,
                               output_stride=config.backbone.output_stride)
    heads = {
        task: head_registry.build(head.type, backbone.channels, backbone.strides, num_classes, head.options,
                                  image_channels=in_channels)
        for task, head in config.heads.items()
    }
    adopt_backbone(backbone, heads)
    model = MultiTaskModel(backbone, heads)
    if config.qat is not None:   # part of the model: every builder (train, resume, predict, export) gets it
        keep = contract_layers(model, config, num_classes, in_channels) if config.qat.full_precision_ends else []
        quantise_weights(model, config.qat.bits, keep)
    return model
