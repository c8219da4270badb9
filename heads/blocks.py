"""Small building blocks shared by the heads."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def upsample_to(x: Tensor, reference: Tensor) -> Tensor:
    """Bilinear resize of `x` to the spatial size of `reference`."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def index_of_stride(head: str, stride: int, available: list[int]) -> int:
    """The index of the backbone's (first) feature map at `stride`; a clear error naming `head` when there is none."""
    if stride not in available:
        raise ValueError(f"{head} head needs a feature map of stride {stride}; the backbone has strides {available}")
    return available.index(stride)
