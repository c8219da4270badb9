from __future__ import annotations

import pytest
import torch

from heads.autoencoder import AutoencoderHead, AutoencoderOptions
from support import CHANNELS, STRIDES, fake_features


def test_reconstructs_from_the_chosen_bottleneck_only():
    head = AutoencoderHead(CHANNELS, STRIDES, 3, AutoencoderOptions([8, 8, 8, 8], bottleneck_stride=16)).eval()
    features = fake_features(2, 64)
    out = head(features, torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    changed = [f.clone() for f in features]
    changed[4] += 1.0  # the stride-32 map is not the bottleneck: it must not matter
    changed[2] += 1.0  # nor the stride-8 map (no skip connections)
    assert torch.equal(head(changed, torch.rand(2, 3, 64, 64)), out)


def test_bad_bottleneck_settings_name_the_option():
    with pytest.raises(ValueError, match="bottleneck_stride: expected one of the backbone's strides"):
        AutoencoderHead(CHANNELS, STRIDES, 3, AutoencoderOptions([8], bottleneck_stride=64))
    with pytest.raises(ValueError, match="decoder_channels: expected 5 entries"):
        AutoencoderHead(CHANNELS, STRIDES, 3, AutoencoderOptions([8, 8]))


def test_output_matches_the_input_on_an_unpadded_backbone():
    import backbones

    backbone = backbones.build("alexnet").eval()  # its maps are one cell short of H/stride
    head = AutoencoderHead(backbone.channels, backbone.strides, 3, AutoencoderOptions([8, 8, 8, 8, 8])).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert head(backbone(image), image).shape == image.shape
