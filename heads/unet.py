"""U-Net decoder (Ronneberger et al. 2015) over the backbone's feature pyramid.

From the deepest map up, each step doubles the resolution and concatenates
the backbone map of that stride (the skip connection). The last step
concatenates the input image itself (all its `image_channels` channels),
the full-resolution skip a backbone cannot provide, so edges are recovered
at pixel level.

Each step upsamples bilinearly, or with a learned 2x2 stride-2 ConvTranspose2d
(the paper's "up-convolution"); when the skip's size is not exactly double
(odd sizes), the result is then resized to the skip. Between two maps of the
same stride (a dilated backbone's deepest stages) there is no upsampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from heads.blocks import conv_bn_relu, upsample_to
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions


@dataclass
class UNetOptions(SegmentationLossOptions):  # the loss weights are flat keys of the head
    # Output channels of each decoder step, deepest first; one per backbone stage (the last step is full resolution).
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    upsampling: Literal["bilinear", "transposed"] = "bilinear"


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2) if transposed else None
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.up is not None:
            x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = upsample_to(x, skip)
        return self.convs(torch.cat([x, skip], dim=1))


class UNetHead(SegmentationHead):
    Options = UNetOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: UNetOptions,
                 image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        if len(options.decoder_channels) != len(channels):
            raise ValueError(f"unet.decoder_channels: expected {len(channels)} entries (one per backbone stage, "
                             f"strides {strides}), got {len(options.decoder_channels)}")
        self.options = options
        skips = list(reversed(channels[:-1])) + [image_channels]  # shallower backbone maps, then the image
        ins = [channels[-1]] + options.decoder_channels[:-1]
        transposed = options.upsampling == "transposed"
        # A dilated backbone repeats its output stride ([2,4,8,16,16]): a step between equal strides
        # concatenates at the same size, with no up-convolution (bilinear already skips equal sizes).
        grows = [deep > shallow for deep, shallow in zip(strides[::-1], list(reversed(strides[:-1])) + [1])]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o, transposed and g)
                                    for i, s, o, g in zip(ins, skips, options.decoder_channels, grows))
        self.classifier = nn.Conv2d(options.decoder_channels[-1], self.num_classes, 1)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, list(reversed(features[:-1])) + [image]):
            x = block(x, skip)
        return self.classifier(x)
