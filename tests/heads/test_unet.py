"""U-Net: both upsampling modes give full-resolution logits, also for sizes that are not multiples of 32."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from support import CHANNELS, STRIDES
from heads.unet import UNetHead, UNetOptions


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
@pytest.mark.parametrize("height, width", [(64, 64), (72, 40)])
def test_output_shape(upsampling, height, width):
    torch.manual_seed(0)
    head = UNetHead(CHANNELS, STRIDES, 3, UNetOptions(decoder_channels=[8] * 5, upsampling=upsampling)).eval()
    features = [torch.randn(2, c, math.ceil(height / s), math.ceil(width / s)) for c, s in zip(CHANNELS, STRIDES)]
    with torch.no_grad():
        out = head(features, torch.rand(2, 3, height, width))
    assert out.shape == (2, 4, height, width)
    transposed = [m for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == (5 if upsampling == "transposed" else 0)
