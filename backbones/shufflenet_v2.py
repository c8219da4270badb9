"""ShuffleNetV2 1.0x (Ma et al. 2018) from torchvision, cut into stride stages.

Random init is torchvision's, i.e. PyTorch's default layer init.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import ShuffleNet_V2_X1_0_Weights, shufflenet_v2_x1_0

from backbones.base import Backbone
from backbones.dilation import dilate_stages
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision


def build(pretrained: bool | str = False, output_stride: int = 32) -> Backbone:
    net = build_torchvision(shufflenet_v2_x1_0, ShuffleNet_V2_X1_0_Weights, pretrained)
    # The max pool alone makes the stride-4 stage; the last stage keeps the final 1x1 conv (1024 channels).
    stages = [net.conv1, net.maxpool, net.stage2, net.stage3, nn.Sequential(net.stage4, net.conv5)]
    # Both branches of a downsampling unit are strided; dilate_stages treats them alike.
    strides = dilate_stages("shufflenet_v2_x1_0", stages, [2, 4, 8, 16, 32], output_stride)
    return Backbone(stages, channels=[24, 24, 116, 232, 1024], strides=strides, mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES = {"shufflenet_v2_x1_0": build}
