"""Fully convolutional network (Long et al. 2015): FCN-32s, -16s and -8s over the backbone's deepest maps.

The paper turns VGG's fc6/fc7 into convolutions; our backbones end before any classifier, so a small
3x3 + 1x1 conv-BN-ReLU block (`fc_channels` wide; 0 = none) stands in for them on the stride-32 map.
A 1x1 conv scores it per class; FCN-16s / -8s upsample the scores x2 with a learned ConvTranspose2d and
add 1x1 scores of the stride-16 (then stride-8) backbone map, the paper's pool4 / pool3 skips, whose
score layers start at zero as in the paper (training starts from the coarser net). A last learned
ConvTranspose2d upsamples x32 / x16 / x8 to the input. Every transposed conv starts as exact bilinear
interpolation (align_corners=False geometry: kernel 2f, stride f, padding f/2).

Sizes that are not multiples of the stride: as in the paper, the upsampled map is cropped to the map it
is added to (bottom/right: the padding above aligns the top-left pixel centres); at the end, a map smaller
than the input (unpadded backbones such as AlexNet lose cells) is resized bilinearly instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.blocks import conv_bn_relu
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions

SKIPS = {"32s": 0, "16s": 1, "8s": 2}  # how many shallower maps (stride /2, /4 of the deepest) are fused


@dataclass
class FCNOptions(SegmentationLossOptions):  # the loss weights are flat keys of the head
    variant: Literal["32s", "16s", "8s"] = "8s"
    fc_channels: int = 256  # width of the conv block standing in for fc6/fc7; 0 scores the deepest map directly


def bilinear_kernel(size: int) -> Tensor:
    """The 2-D bilinear interpolation kernel of `size` x `size` (the FCN reference `upsample_filt`)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable x`factor` upsampling of each channel on its own, initialised to bilinear interpolation."""
    if factor < 2 or factor % 2:
        raise ValueError(f"fcn: upsampling factor must be even, got {factor}")
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        for c in range(channels):
            up.weight[c, c] = bilinear_kernel(2 * factor)
    return up


def crop_or_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop `x`'s bottom/right excess to `size`; resize bilinearly if it is smaller on any side."""
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[..., : size[0], : size[1]]


class FCNHead(SegmentationHead):
    Options = FCNOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: FCNOptions, image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        self.options = options
        self.levels = self._fused_levels(strides, SKIPS[options.variant])  # deepest first
        deep = channels[-1]
        self.fc = nn.Sequential(conv_bn_relu(deep, options.fc_channels, 3),
                                conv_bn_relu(options.fc_channels, options.fc_channels, 1)) if options.fc_channels else nn.Identity()
        self.score = nn.ModuleList([nn.Conv2d(options.fc_channels or deep, self.num_classes, 1)])
        for level in self.levels[1:]:
            skip_score = nn.Conv2d(channels[level], self.num_classes, 1)
            nn.init.zeros_(skip_score.weight)
            nn.init.zeros_(skip_score.bias)
            self.score.append(skip_score)
        self.up2 = nn.ModuleList(bilinear_upsampler(self.num_classes, 2) for _ in self.levels[1:])
        self.final_up = bilinear_upsampler(self.num_classes, strides[self.levels[-1]])

    @staticmethod
    def _fused_levels(strides: list[int], skips: int) -> list[int]:
        """Indices of the feature maps used, deepest first; each next one must be at half the stride."""
        levels = [len(strides) - 1]
        for _ in range(skips):
            wanted = strides[levels[-1]] // 2
            if wanted not in strides:
                raise ValueError(f"fcn: this variant needs a feature map at stride {wanted}; backbone strides {strides}")
            levels.append(strides.index(wanted))
        return levels

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        scores = self.score[0](self.fc(features[self.levels[0]]))
        for up, score, level in zip(self.up2, self.score[1:], self.levels[1:]):
            skip = features[level]
            scores = crop_or_resize(up(scores), skip.shape[-2:]) + score(skip)
        return crop_or_resize(self.final_up(scores), image.shape[-2:])
