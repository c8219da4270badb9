"""GoogLeNet / Inception v1 (Szegedy et al. 2015) from torchvision, cut at its max pools.

The auxiliary classifiers, pooling and fc are dropped. torchvision's ImageNet
weights come with `transform_input=True`, which turns ImageNet-normalised
input into (x - 0.5) / 0.5 of the [0, 1] image: that is what the weights
expect, so this backbone normalises with mean = std = 0.5 directly (the
stages never run GoogLeNet.forward, where transform_input would apply).
"""
from __future__ import annotations

from torch import nn
from torchvision.models import GoogLeNet, GoogLeNet_Weights, googlenet

from backbones.base import Backbone
from backbones.torchvision_models import build_torchvision

INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)


def _googlenet(weights: GoogLeNet_Weights | None = None, **kwargs) -> GoogLeNet:
    # torchvision warns unless random init is asked for explicitly (truncated normal, its own); with weights
    # it forbids the argument.
    if weights is None:
        kwargs.setdefault("init_weights", True)
    return googlenet(weights=weights, aux_logits=False, **kwargs)


def build(pretrained: bool | str = False) -> Backbone:
    # A state-dict file may come from a model trained with the auxiliary classifiers: their keys are skipped.
    net = build_torchvision(_googlenet, GoogLeNet_Weights, pretrained, ignore_keys=("aux1.", "aux2."))
    stages = [
        net.conv1,
        nn.Sequential(net.maxpool1, net.conv2, net.conv3),
        nn.Sequential(net.maxpool2, net.inception3a, net.inception3b),
        nn.Sequential(net.maxpool3, net.inception4a, net.inception4b, net.inception4c, net.inception4d,
                      net.inception4e),
        nn.Sequential(net.maxpool4, net.inception5a, net.inception5b),
    ]
    return Backbone(stages, channels=[64, 192, 480, 832, 1024], strides=[2, 4, 8, 16, 32],
                    mean=INPUT_MEAN, std=INPUT_STD)


BACKBONES = {"googlenet": build}
