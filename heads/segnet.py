"""SegNet decoder (Badrinarayanan et al. 2017): upsampling by max-unpooling, no skip concatenation.

The backbone records the argmax indices of its max-pool layers (`needs_pool_indices`, see
backbones/pool_indices.py); from the deepest map up, each decoder step puts its values back at the
positions the matching encoder pool took its maxima from (`F.max_unpool2d`, zeros elsewhere), then
densifies the sparse map with conv-BN-ReLU layers. The decoder mirrors the encoder's widths: the step
leaving stride s takes that stage's channels and gives the next shallower stage's (the first stage's for
the last step), and a 1x1 conv scores the classes at full resolution.

A step uses the pool record whose output has the step's input size and channel count and whose input has
the step's target size. VGG(-BN) backbones pool at the end of every stage, so every step unpools: the
paper's architecture. Backbones with fewer pools than stages fall back, honestly but not as in the paper,
to bilinear upsampling for every step without a matching record: ResNet-18/34 unpool only the stem pool
(stride 2 -> 4, 64 channels); ResNet-50 and wider have no step whose input carries 64 channels, so every
step is bilinear. A backbone without any nn.MaxPool2d (MobileNet, EfficientNet, ...) is refused with a
ValueError when the model is assembled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from backbones.pool_indices import PoolRecord
from heads.blocks import conv_bn_relu
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions


@dataclass
class SegNetOptions(SegmentationLossOptions):  # the loss weights are flat keys of the head
    convs_per_step: int = 2  # conv-BN-ReLU layers after each unpooling (the paper: 2 or 3, mirroring VGG)


def unpool_or_upsample(x: Tensor, size: tuple[int, int], records: list[PoolRecord]) -> Tensor:
    """Max-unpool `x` to `size` with the matching record (deepest first), else upsample bilinearly."""
    for record in reversed(records):
        if record.indices.shape[1:] == x.shape[1:] and record.input_size == tuple(size):
            return F.max_unpool2d(x, record.indices, kernel_size=2, output_size=size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegNetHead(SegmentationHead):
    needs_pool_indices = True
    Options = SegNetOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: SegNetOptions, image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        if options.convs_per_step < 1:
            raise ValueError(f"segnet.convs_per_step: expected at least 1, got {options.convs_per_step}")
        self.options = options
        outs = [channels[0]] + channels[:-1]  # step i (stage i, shallowest first) -> the next shallower width
        self.steps = nn.ModuleList(self._step(i, o, options.convs_per_step) for i, o in zip(channels, outs))
        self.classifier = nn.Conv2d(channels[0], self.num_classes, 1)

    @staticmethod
    def _step(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
        widths = [in_channels] * convs + [out_channels]
        return nn.Sequential(*(conv_bn_relu(a, b) for a, b in zip(widths[:-1], widths[1:])))

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        records = getattr(features, "pool_indices", None)
        if records is None:
            raise ValueError("segnet: the features carry no max-pool indices; assemble the model with "
                             "MultiTaskModel / build_model, or call backbone.record_pool_indices()")
        targets = [image] + list(features[:-1])  # step i goes to the size of the map before stage i
        x = features[-1]
        for step, target in zip(reversed(self.steps), reversed(targets)):
            x = step(unpool_or_upsample(x, target.shape[-2:], records))
        return self.classifier(x)
