"""LeNet-5's feature extractor (LeCun et al. 1998), written here: no library ships it.

C1 (6 maps) and C3 (16 maps), 5x5 convs each followed by 2x2 subsampling,
with the modern ReLU and max pooling. The convs are padded so any input of
at least 4 px works (the original took unpadded 32x32 inputs); stages end at
strides 2 and 4. There are no pretrained weights: it always starts from
Kaiming-initialised (ReLU) convs.
"""
from __future__ import annotations

from torch import nn

from backbones.base import Backbone


def _conv_pool(in_channels: int, out_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2))


def build(pretrained: bool | str | None = False) -> Backbone:
    if pretrained not in (False, None):
        raise ValueError(f"lenet5 has no pretrained weights (got pretrained={pretrained!r}); use pretrained: false")
    # Inputs are [0, 1] images; centring them around 0 suits the ReLU convs.
    return Backbone([_conv_pool(3, 6), _conv_pool(6, 16)], channels=[6, 16], strides=[2, 4],
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


BACKBONES = {"lenet5": build}
