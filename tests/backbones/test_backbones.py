from __future__ import annotations

import pytest
import torch

import backbones
from backbones.weights import require_cached


@pytest.mark.parametrize("name", backbones.names())
def test_features_have_declared_channels_and_strides(name):
    backbone = backbones.build(name, pretrained=False).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.channels
    assert [64 // f.shape[-1] for f in features] == backbone.strides


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="mobilenet_v2"):
        backbones.build("mobilenet_v9")


def test_missing_weight_file_fails_fast_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mobilenet_v2-b0353104.pth.*make weights"):
        backbones.build("mobilenet_v2", pretrained="IMAGENET1K_V1")


def test_pretrained_mobilenet_loads_torchvision_imagenet_weights():
    """The seeded cache file goes through torchvision's own weights API, unchanged."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    require_cached(MobileNet_V2_Weights.IMAGENET1K_V1.url)  # `make test` seeds it
    reference = mobilenet_v2(weights="IMAGENET1K_V1").eval()
    backbone = backbones.build("mobilenet_v2", pretrained="IMAGENET1K_V1").eval()
    image = torch.rand(1, 3, 64, 64)
    normalised = (image - backbone.mean) / backbone.std
    with torch.no_grad():
        assert torch.equal(backbone(image)[-1], reference.features(normalised))
