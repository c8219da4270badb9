"""VGG 11/13/16/19 with and without batch norm (Simonyan & Zisserman 2015) from torchvision.

Each stage is one conv block with the max pool that ends it, so the stages end
at strides 2, 4, 8, 16, 32. Random init is torchvision's: Kaiming normal
(fan_out, ReLU) for every conv.

The classifier is not part of the backbone (forward and state dict hold the
convolutions only), but its hidden layers fc6 and fc7 are offered to the heads
as `classifier_fc` (backbones/base.py): FCN recasts them as convolutions.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision import models

from backbones.base import Backbone, ClassifierFC
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision, cut

DEPTHS = (11, 13, 16, 19)


def build(depth: int, batch_norm: bool, pretrained: bool | str = False) -> Backbone:
    name = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    builder = getattr(models, name)
    weights = getattr(models, f"VGG{depth}_BN_Weights" if batch_norm else f"VGG{depth}_Weights")
    model = build_torchvision(builder, weights, pretrained)
    features = model.features
    pool_ends = [i + 1 for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    backbone = Backbone(cut(features, pool_ends), channels=[64, 128, 256, 512, 512], strides=[2, 4, 8, 16, 32],
                        mean=IMAGENET_MEAN, std=IMAGENET_STD)
    backbone.classifier_fc = classifier_fc(model)
    return backbone


def classifier_fc(model: models.VGG) -> ClassifierFC:
    """fc6 ([4096, 512*7*7]) and fc7 ([4096, 4096]) of torchvision's VGG classifier (Linear, ReLU, Dropout,
    Linear, ReLU, Dropout, Linear): fc8, the 1000 ImageNet scores, is left out. Detached: plain tensors."""
    fc6, fc7, _ = [layer for layer in model.classifier if isinstance(layer, nn.Linear)]
    return ClassifierFC(layers=tuple((fc.weight.detach(), fc.bias.detach()) for fc in (fc6, fc7)),
                        grid=tuple(model.avgpool.output_size))


BACKBONES = {
    f"vgg{depth}{'_bn' if bn else ''}": partial(build, depth, bn) for depth in DEPTHS for bn in (False, True)
}
