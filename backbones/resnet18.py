"""ResNet-18 (He et al. 2016) from torchvision, cut into stride stages."""
from __future__ import annotations

from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from backbones.base import Backbone
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision


def build(pretrained: bool | str = False) -> Backbone:
    net = build_torchvision(resnet18, ResNet18_Weights, pretrained)
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        nn.Sequential(net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        net.layer4,
    ]
    return Backbone(stages, channels=[64, 64, 128, 256, 512], strides=[2, 4, 8, 16, 32],
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
