"""model.backbone.output_stride: dilated backbones keep their parameters and declare the strides they return."""
from __future__ import annotations

import pytest
import torch

import backbones
from heads import registry as head_registry
from heads.classification import ClassificationOptions
from heads.unet import UNetOptions
from pipeline.analysis.receptive_field import measure
from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.model import build_model

SIZE = 64


def features_of(backbone: backbones.Backbone) -> list[torch.Tensor]:
    with torch.no_grad():
        return backbone.eval()(torch.rand(1, 3, SIZE, SIZE))


def shapes(backbone: backbones.Backbone) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in backbone.state_dict().items()}


def assert_like_undilated(name: str, output_stride: int, expected: list[int]) -> None:
    """Declared strides are the real ones, channels and every tensor are those of the undilated net."""
    plain = backbones.build(name)
    dilated = backbones.build(name, output_stride=output_stride)
    features = features_of(dilated)
    assert dilated.strides == expected
    assert [SIZE // f.shape[-1] for f in features] == dilated.strides
    assert [SIZE // f.shape[-2] for f in features] == dilated.strides
    assert [f.shape[1] for f in features] == dilated.channels == plain.channels
    assert shapes(dilated) == shapes(plain)
    dilated.load_state_dict(plain.state_dict())  # pretrained weights of the undilated net load strictly


@pytest.mark.parametrize("output_stride, expected", [(16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])])
def test_dilated_resnet18_declares_its_strides_and_keeps_its_parameters(no_network, output_stride, expected):
    assert_like_undilated("resnet18", output_stride, expected)
    dilated = backbones.build("resnet18", output_stride=output_stride)
    assert sum(p.numel() for p in dilated.parameters()) == sum(p.numel() for p in backbones.build("resnet18").parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2", "tf_efficientnet_lite0", "resnet50"])
def test_mobilenet_timm_and_bottleneck_resnet_at_output_stride_16(no_network, name):
    assert_like_undilated(name, 16, [2, 4, 8, 16, 16])


def test_undilated_strides_are_unchanged(no_network):
    backbone = backbones.build("mobilenet_v2")
    assert backbone.strides == [SIZE // f.shape[-1] for f in features_of(backbone)] == [2, 4, 8, 16, 32]


def test_bad_output_stride_is_a_config_error_naming_the_key():
    raw = {"data": {"train": "t/annotations.json", "val": "v/annotations.json"},
           "model": {"backbone": {"name": "resnet18", "output_stride": 12},
                     "heads": {"cls": {"type": "classification"}}}}
    with pytest.raises(ConfigError, match=r"model\.backbone\.output_stride: expected 32, 16 or 8.*got 12"):
        parse_config(raw)


def test_build_model_passes_output_stride(no_network):
    raw = {"data": {"train": "t/annotations.json", "val": "v/annotations.json"},
           "model": {"backbone": {"name": "resnet18", "output_stride": 16},
                     "heads": {"cls": {"type": "classification"}}}}
    model = build_model(parse_config(raw).model, num_classes=3)
    assert model.backbone.strides == [2, 4, 8, 16, 16]


def test_family_that_cannot_dilate_says_so():
    with pytest.raises(ValueError, match=r"backbone vgg11 cannot change its output stride.*32 only"):
        backbones.build("vgg11", output_stride=16)
    with pytest.raises(ValueError, match=r"output_stride must be one of 32, 16, 8, got 12"):
        backbones.build("resnet18", output_stride=12)


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_unet_on_a_dilated_backbone_trains(no_network, upsampling):
    backbone = backbones.build("resnet18", output_stride=16)
    head = head_registry.build("unet", backbone.channels, backbone.strides, 2,
                               UNetOptions(decoder_channels=[8, 8, 8, 8, 8], upsampling=upsampling))
    image = torch.rand(2, 3, SIZE, SIZE)
    out = head(backbone(image), image)
    assert out.shape == (2, 3, SIZE, SIZE)  # 2 classes + background
    out.mean().backward()
    assert all(p.grad is not None for p in backbone.stages[-1].parameters())
    # no up-convolution between the two stride-16 maps: the first step concatenates at the same size
    assert (head.blocks[0].up is None) and (head.blocks[1].up is not None) == (upsampling == "transposed")


def test_classification_head_on_a_dilated_backbone_trains(no_network):
    backbone = backbones.build("mobilenet_v2", output_stride=8)
    head = head_registry.build("classification", backbone.channels, backbone.strides, 5, ClassificationOptions())
    image = torch.rand(2, 3, SIZE, SIZE)
    out = head(backbone(image), image)
    logits = getattr(out, "logits", out)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in backbone.stages[-1].parameters())


def deepest_field(backbone: backbones.Backbone) -> tuple[tuple[int, int], tuple[float, float]]:
    """Measured receptive field and stride of the last stage; 480 px holds ResNet-18's 435 px field unclipped."""
    field = measure(backbone, (3, 480, 480), ["stages.4"])["stages.4"]
    assert not field.clipped
    return field.size, field.stride


def test_dilation_keeps_the_measured_receptive_field_at_twice_the_density(no_network):
    """Atrous conversion is exact: the deepest stage sees as far as the undilated one (435 px) on a map of stride
    16 instead of 32. Without the dilation (strides only removed) it would see much less."""
    plain_size, plain_stride = deepest_field(backbones.build("resnet18"))
    dilated = backbones.build("resnet18", output_stride=16)
    dilated_size, dilated_stride = deepest_field(dilated)
    assert (plain_stride, dilated_stride) == ((32.0, 32.0), (16.0, 16.0))
    assert dilated_size == plain_size == (435, 435)
    for conv in dilated.stages[4].modules():  # undo the dilation, keep stride 1
        if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.dilation, conv.padding = (1, 1), (1, 1)
    undilated_size, _ = deepest_field(dilated)
    assert undilated_size[0] < dilated_size[0] and undilated_size[1] < dilated_size[1]
