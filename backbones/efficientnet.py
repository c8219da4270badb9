"""EfficientNet-B0 (Tan & Le 2019) from torchvision, cut into stride stages.

Random init is torchvision's (Kaiming normal, fan_out). For timm's
EfficientNet-Lite0 see timm_models.py.
"""
from __future__ import annotations

from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from backbones.base import Backbone
from backbones.torchvision_models import features_backbone

# `features` indices (exclusive) where strides 2, 4, 8, 16, 32 end; the last stage keeps the final 1x1 conv.
STAGE_ENDS = [2, 3, 4, 6, 9]


def build(pretrained: bool | str = False, output_stride: int = 32) -> Backbone:
    return features_backbone(efficientnet_b0, EfficientNet_B0_Weights, pretrained, STAGE_ENDS,
                             [16, 24, 40, 112, 1280], "efficientnet_b0", output_stride)


BACKBONES = {"efficientnet_b0": build}
