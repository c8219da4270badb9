"""DeepLabv3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation") and
DeepLabv3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution ...") over the backbone's maps.

Both run atrous spatial pyramid pooling (torchvision's ASPP: a 1x1 branch, three 3x3 atrous branches and an
image-pooling branch, concatenated and projected to `channels`, dropout 0.5) on the deepest map. The paper's
rates (6, 12, 18) are for output stride 16; the same receptive fields at another stride need rates scaled by
16 / stride (doubled at 8, halved at 32), so `rates` are given at stride 16 and scaled to the deepest map's.

v3: a 3x3 conv-BN-ReLU and a 1x1 classifier on the ASPP output, upsampled bilinearly to the image.
v3+: a decoder refines the ASPP output with low-level features from the stride-4 stage (or the shallowest
stage with stride >= 4): those are reduced to 48 channels by a 1x1 conv-BN-ReLU (so they do not outweigh
the semantic features), concatenated with the upsampled ASPP output, passed through two 3x3 conv-BN-ReLU
and a 1x1 classifier, and upsampled bilinearly to the image. Plain (not separable) convolutions throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from heads.blocks import conv_bn_relu, upsample_to
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions

PAPER_STRIDE = 16  # the output stride the paper's rates are given for


@dataclass
class DeepLabV3Options(SegmentationLossOptions):  # the loss weights are flat keys of the head
    rates: list[int] = field(default_factory=lambda: [6, 12, 18])  # atrous rates at output stride 16
    channels: int = 256  # width of ASPP and of the convs after it


@dataclass
class DeepLabV3PlusOptions(DeepLabV3Options):
    low_level_channels: int = 48  # the paper's reduction of the low-level skip


def scaled_rates(rates: list[int], stride: int) -> list[int]:
    """The rates for a deepest map at `stride`: same receptive field in image pixels as at stride 16."""
    return [max(1, round(r * PAPER_STRIDE / stride)) for r in rates]


def low_level_index(strides: list[int]) -> int:
    """The stage giving v3+'s low-level skip: the one at stride 4, else the shallowest with stride >= 4
    (on equal strides the deepest of them, whose features are richer)."""
    candidates = [(s, i) for i, s in enumerate(strides) if s >= 4]
    if not candidates:
        raise ValueError(f"deeplabv3plus: needs a feature map at stride >= 4 for the low-level skip; "
                         f"backbone strides {strides}")
    best = min(s for s, _ in candidates)
    return max(i for s, i in candidates if s == best)


class DeepLabV3Head(SegmentationHead):
    Options = DeepLabV3Options

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: DeepLabV3Options,
                 image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        if not options.rates or any(r < 1 for r in options.rates):
            raise ValueError(f"{type(self).__name__}: rates must be positive, got {options.rates}")
        self.options = options
        self.rates = scaled_rates(options.rates, strides[-1])
        self.aspp = ASPP(channels[-1], self.rates, options.channels)
        self.classifier = self._classifier(channels, strides)

    def _classifier(self, channels: list[int], strides: list[int]) -> nn.Module:
        width = self.options.channels
        return nn.Sequential(conv_bn_relu(width, width, 3), nn.Conv2d(width, self.num_classes, 1))

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        return upsample_to(self.classifier(self.aspp(features[-1])), image)


class DeepLabV3PlusHead(DeepLabV3Head):
    Options = DeepLabV3PlusOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: DeepLabV3PlusOptions,
                 image_channels: int = 3) -> None:
        self.low_level = low_level_index(strides)
        super().__init__(channels, strides, num_classes, options, image_channels)
        self.reduce = conv_bn_relu(channels[self.low_level], options.low_level_channels, 1)

    def _classifier(self, channels: list[int], strides: list[int]) -> nn.Module:
        """The v3+ decoder after the concatenation: two 3x3 conv-BN-ReLU, then the scores."""
        width, skip = self.options.channels, self.options.low_level_channels
        return nn.Sequential(conv_bn_relu(width + skip, width, 3), conv_bn_relu(width, width, 3),
                             nn.Conv2d(width, self.num_classes, 1))

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        skip = self.reduce(features[self.low_level])
        x = upsample_to(self.aspp(features[-1]), skip)
        return upsample_to(self.classifier(torch.cat([x, skip], dim=1)), image)
