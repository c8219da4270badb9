"""AlexNet (Krizhevsky et al. 2012) from torchvision, cut at its max pools.

Its convs and pools are unpadded, so a stage's map is one cell short of
H / stride per side (64 px in: 15, 7, 3, 1; 224 px: 55, 27, 13, 6). The
declared strides are the true step between cells; there is no stride-2 map.
Random init is torchvision's, i.e. PyTorch's default layer init.
"""
from __future__ import annotations

from torchvision.models import AlexNet_Weights, alexnet

from backbones.base import Backbone
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision, cut

# `features` indices (exclusive): conv1+ReLU (stride 4); a max pool and the convs after it (8, then 16);
# the last max pool (32).
STAGE_ENDS = [2, 5, 12, 13]


def build(pretrained: bool | str = False) -> Backbone:
    features = build_torchvision(alexnet, AlexNet_Weights, pretrained).features
    return Backbone(cut(features, STAGE_ENDS), channels=[64, 192, 256, 256], strides=[4, 8, 16, 32],
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES = {"alexnet": build}
