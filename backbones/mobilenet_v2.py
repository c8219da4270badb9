"""MobileNetV2 (Sandler et al. 2018) from torchvision, cut into stride stages."""
from __future__ import annotations

from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from backbones.base import Backbone
from backbones.torchvision_models import features_backbone

# `features` indices (exclusive) where strides 2, 4, 8, 16, 32 end. Random init is torchvision's (Kaiming).
STAGE_ENDS = [2, 4, 7, 14, 19]


def build(pretrained: bool | str = False, output_stride: int = 32) -> Backbone:
    return features_backbone(mobilenet_v2, MobileNet_V2_Weights, pretrained, STAGE_ENDS, [16, 24, 32, 96, 1280],
                             "mobilenet_v2", output_stride)


BACKBONES = {"mobilenet_v2": build}
