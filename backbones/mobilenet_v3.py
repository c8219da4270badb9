"""MobileNetV3 small and large (Howard et al. 2019) from torchvision, cut into stride stages."""
from __future__ import annotations

from functools import partial

from torchvision.models import (
    MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights, mobilenet_v3_large, mobilenet_v3_small,
)

from backbones.base import Backbone
from backbones.torchvision_models import features_backbone

# name -> (builder, weights, `features` indices (exclusive) where strides 2..32 end, their channels).
# The last stage keeps the final 1x1 conv, as MobileNetV2's does.
VARIANTS = {
    "mobilenet_v3_small": (mobilenet_v3_small, MobileNet_V3_Small_Weights, [1, 2, 4, 9, 13], [16, 16, 24, 48, 576]),
    "mobilenet_v3_large": (mobilenet_v3_large, MobileNet_V3_Large_Weights, [2, 4, 7, 13, 17], [16, 24, 40, 112, 960]),
}


def build(name: str, pretrained: bool | str = False, output_stride: int = 32) -> Backbone:
    builder, weights, ends, channels = VARIANTS[name]
    return features_backbone(builder, weights, pretrained, ends, channels, name, output_stride)  # random init: torchvision's Kaiming


BACKBONES = {name: partial(build, name) for name in VARIANTS}
