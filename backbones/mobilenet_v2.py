"""MobileNetV2 (Sandler et al. 2018) from torchvision, cut into stride stages."""
from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from backbones.base import Backbone
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision

# Index ranges of `features` that end at strides 2, 4, 8, 16, 32.
STAGE_BOUNDS = [(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)]


def build(pretrained: bool | str = False) -> Backbone:
    features = build_torchvision(mobilenet_v2, MobileNet_V2_Weights, pretrained).features
    stages = [nn.Sequential(*features[a:b]) for a, b in STAGE_BOUNDS]
    return Backbone(stages, channels=[16, 24, 32, 96, 1280], strides=[2, 4, 8, 16, 32],
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
