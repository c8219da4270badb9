"""MobileNetV2 (Sandler et al. 2018) from torchvision, cut into stride stages."""
from __future__ import annotations

from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from backbones.base import Backbone
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision, cut

# `features` indices (exclusive) where strides 2, 4, 8, 16, 32 end. Random init is torchvision's (Kaiming).
STAGE_ENDS = [2, 4, 7, 14, 19]


def build(pretrained: bool | str = False) -> Backbone:
    features = build_torchvision(mobilenet_v2, MobileNet_V2_Weights, pretrained).features
    return Backbone(cut(features, STAGE_ENDS), channels=[16, 24, 32, 96, 1280], strides=[2, 4, 8, 16, 32],
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES = {"mobilenet_v2": build}
