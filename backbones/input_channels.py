"""A backbone for images of any channel count C: its first convolution and its input normalisation adapted.

Every family here is built for RGB (3 input channels, possibly with ImageNet weights). For C != 3:

- The first convolution (the first nn.Conv2d in module order within `Backbone.stages`, which must take 3
  channels) gets C input channels through timm's `adapt_input_conv`: for C = 1 the RGB kernels are summed
  (a grey image replicated to RGB gives the same response); otherwise they are repeated (channel i takes
  RGB kernel i % 3) and scaled by 3 / C, so the layer's output keeps its scale. Pretrained weights stay useful.
- The normalisation buffers `mean` / `std` get C entries. C = 1: the mean of the three means and of the
  three stds. C >= 2: the RGB values for the channels that take an RGB kernel unchanged in position (the
  first min(C, 3)), and the averages of the three for channels 4..C. Those extra bands (near infrared,
  depth, ...) have no RGB counterpart; the kernel they receive is a copy, not a statement about their
  statistics, so they get the neutral choice: the average RGB statistics, i.e. the same treatment a grey
  channel gets.

For C = 1 a grey image through the adapted model is close to, but not exactly, that image replicated to RGB
through the 3-channel model: with per-channel statistics (m_c, s_c) the RGB model computes
sum_c W_c (g - m_c) / s_c, the adapted one (sum_c W_c)(g - mean m) / mean s; they agree exactly when the
three means and the three stds are equal (LeNet, GoogLeNet: 0.5). With ImageNet statistics the differing
means add a per-filter constant (large for colour-opponent filters); for pretrained MobileNetV2 the maps
still agree to a cosine similarity of about 0.99 in the early stages, 0.92 in the last
(tests/backbones/test_input_channels.py measures it).
"""
from __future__ import annotations

import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from backbones.base import Backbone

RGB = 3


def first_conv(backbone: Backbone) -> tuple[str, nn.Conv2d]:
    """(name within the backbone, module) of the first nn.Conv2d in module order: the one that reads the image."""
    for name, module in backbone.stages.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"stages.{name}", module
    raise ValueError("the backbone's stages contain no nn.Conv2d to adapt to another channel count")


def first_conv_weight_key(backbone: Backbone) -> str:
    """State-dict key of the first convolution's weight (e.g. `stages.0.0.weight`)."""
    return f"{first_conv(backbone)[0]}.weight"


def adapt_input_channels(backbone: Backbone, in_channels: int) -> Backbone:
    """Adapt a 3-channel backbone, in place, to `in_channels` input channels (see the module docstring)."""
    if in_channels < 1:
        raise ValueError(f"in_channels: expected a positive channel count, got {in_channels}")
    current = backbone.in_channels
    if in_channels == current:
        return backbone
    if current != RGB:
        raise ValueError(f"the backbone already takes {current} channels; only a 3-channel one can be adapted")
    name, conv = first_conv(backbone)
    if conv.in_channels != RGB or conv.groups != 1:
        raise ValueError(f"the backbone's first convolution ({name}: {conv}) does not take the 3 image channels; "
                         f"cannot adapt it to {in_channels} channels")
    weight = adapt_input_conv(in_channels, conv.weight.detach())
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_channels
    backbone.mean = normalisation(backbone.mean, in_channels)
    backbone.std = normalisation(backbone.std, in_channels)
    return backbone


def normalisation(rgb: torch.Tensor, in_channels: int) -> torch.Tensor:
    """[1, 3, 1, 1] RGB statistics -> [1, in_channels, 1, 1]: the average for C = 1; for C >= 2 the RGB values
    for the first min(C, 3) channels and their average for the rest (same device and dtype)."""
    average = rgb.mean(dim=1, keepdim=True)
    if in_channels == 1:
        return average
    head = rgb[:, :min(in_channels, RGB)]
    # Bands beyond RGB (near infrared, depth, ...) have no RGB counterpart: neutral, average statistics.
    return torch.cat([head, average.expand(-1, max(in_channels - RGB, 0), -1, -1)], dim=1).contiguous()
