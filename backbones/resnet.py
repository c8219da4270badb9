"""ResNet (He et al. 2016) and ResNeXt (Xie et al. 2017) from torchvision, cut into stride stages.

Random init is torchvision's: Kaiming normal (fan_out, ReLU) for every conv.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision import models

from backbones.base import Backbone
from backbones.dilation import capped_strides, dilate_stages, resnet_dilation
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision

BASIC = [64, 64, 128, 256, 512]          # BasicBlock widths
BOTTLENECK = [64, 256, 512, 1024, 2048]  # Bottleneck widths (x4 expansion)

# name -> (builder, weights enum, stage channels)
VARIANTS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights, BASIC),
    "resnet34": (models.resnet34, models.ResNet34_Weights, BASIC),
    "resnet50": (models.resnet50, models.ResNet50_Weights, BOTTLENECK),
    "resnet101": (models.resnet101, models.ResNet101_Weights, BOTTLENECK),
    "resnet152": (models.resnet152, models.ResNet152_Weights, BOTTLENECK),
    "resnext50_32x4d": (models.resnext50_32x4d, models.ResNeXt50_32X4D_Weights, BOTTLENECK),
}


def build(name: str, pretrained: bool | str = False, output_stride: int = 32) -> Backbone:
    builder, weights, channels = VARIANTS[name]
    # Bottleneck nets: torchvision's own dilated ResNet (DeepLab's). Its BasicBlock refuses dilation, so
    # ResNet-18/34 are dilated afterwards (dilate_stages). Same parameters either way: weights still load.
    basic = channels == BASIC
    dilation = resnet_dilation(32 if basic else output_stride)
    net = build_torchvision(builder, weights, pretrained, replace_stride_with_dilation=dilation)
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        nn.Sequential(net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        net.layer4,
    ]
    strides = [2, 4, 8, 16, 32]
    strides = dilate_stages(name, stages, strides, output_stride) if basic else capped_strides(strides, output_stride)
    return Backbone(stages, channels=channels, strides=strides, mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES = {name: partial(build, name) for name in VARIANTS}
