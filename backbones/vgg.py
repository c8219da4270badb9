"""VGG 11/13/16/19 with and without batch norm (Simonyan & Zisserman 2015) from torchvision.

Each stage is one conv block with the max pool that ends it, so the stages end
at strides 2, 4, 8, 16, 32. Random init is torchvision's: Kaiming normal
(fan_out, ReLU) for every conv.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision import models

from backbones.base import Backbone
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision, cut

DEPTHS = (11, 13, 16, 19)


def build(depth: int, batch_norm: bool, pretrained: bool | str = False) -> Backbone:
    name = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    builder = getattr(models, name)
    weights = getattr(models, f"VGG{depth}_BN_Weights" if batch_norm else f"VGG{depth}_Weights")
    features = build_torchvision(builder, weights, pretrained).features  # the classifier is dropped
    pool_ends = [i + 1 for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    return Backbone(cut(features, pool_ends), channels=[64, 128, 256, 512, 512], strides=[2, 4, 8, 16, 32],
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES = {
    f"vgg{depth}{'_bn' if bn else ''}": partial(build, depth, bn) for depth in DEPTHS for bn in (False, True)
}
