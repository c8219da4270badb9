"""SegNet: the backbone records max-pool indices on request, and the decoder unpools with them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.pool_indices import IndexedMaxPool2d
from heads.segnet import SegNetHead, SegNetOptions, unpool_or_upsample
from pipeline.model import MultiTaskModel

NUM_CLASSES = 3


def segnet_model(backbone_name: str) -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = backbones.build(backbone_name, pretrained=False)
    head = SegNetHead(backbone.channels, backbone.strides, NUM_CLASSES, SegNetOptions(convs_per_step=1))
    return MultiTaskModel(backbone, {"seg": head}).eval()


def test_unpooling_puts_values_back_at_the_argmax_positions():
    x = torch.tensor([[[[1.0, 5.0, 0.0, 2.0],
                        [3.0, 4.0, 9.0, 1.0],
                        [7.0, 0.0, 1.0, 1.0],
                        [2.0, 6.0, 3.0, 8.0]]]])
    pool, records = IndexedMaxPool2d(nn.MaxPool2d(2)), []
    pool.sink = records
    pooled = pool(x)
    assert pooled.tolist() == [[[[5.0, 9.0], [7.0, 8.0]]]]
    unpooled = unpool_or_upsample(pooled * 10, (4, 4), records)
    expected = torch.tensor([[[[0.0, 50.0, 0.0, 0.0],
                               [0.0, 0.0, 90.0, 0.0],
                               [70.0, 0.0, 0.0, 0.0],
                               [0.0, 0.0, 0.0, 80.0]]]])
    assert torch.equal(unpooled, expected)


def test_recording_keeps_the_features_and_holds_nothing_between_calls():
    backbone = backbones.build("resnet18", pretrained=False).eval()
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = backbone(image)
        assert not hasattr(plain, "pool_indices")
        assert backbone.record_pool_indices() == 1  # ResNet: the stem pool only
        first, second = backbone(image), backbone(image)
    assert all(torch.equal(a, b) for a, b in zip(plain, first))
    assert len(first.pool_indices) == len(second.pool_indices) == 1
    assert first.pool_indices[0].input_size == (16, 16) and first.pool_indices[0].indices.shape == (1, 64, 8, 8)
    assert all(m.sink is None for m in backbone.modules() if isinstance(m, IndexedMaxPool2d))


def test_vgg_unpools_at_every_step_without_bilinear_fallback(monkeypatch):
    model = segnet_model("vgg11_bn")

    def no_interpolation(*args, **kwargs):
        raise AssertionError("bilinear fallback used on VGG")

    monkeypatch.setattr(torch.nn.functional, "interpolate", no_interpolation)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 40, 40))["seg"]  # 40 -> 20, 10, 5, 2: an odd pre-pool size too
    assert out.shape == (2, NUM_CLASSES + 1, 40, 40)


def test_resnet_output_shape_with_bilinear_fallback():
    with torch.no_grad():
        out = segnet_model("resnet18")(torch.rand(2, 3, 48, 48))["seg"]
    assert out.shape == (2, NUM_CLASSES + 1, 48, 48)


def test_backbone_without_max_pool_is_refused():
    with pytest.raises(ValueError, match="no nn.MaxPool2d"):
        segnet_model("mobilenet_v2")


def test_features_without_indices_are_refused():
    head = SegNetHead([8, 16], [2, 4], NUM_CLASSES, SegNetOptions())
    with pytest.raises(ValueError, match="no max-pool indices"):
        head([torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)], torch.rand(1, 3, 16, 16))
