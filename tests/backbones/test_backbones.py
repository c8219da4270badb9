"""Every registered backbone honours the contract; weights resolve offline or fail fast."""
from __future__ import annotations

import pytest
import torch

import backbones
from backbones.weights import TIMM_CONVERTED_PACKAGES, require_cached

# Families whose unpadded convs and pools leave each map this many cells short of H / stride.
CELLS_SHORT = {"alexnet": 1}
# Cheap enough to also run for real; the rest run on the meta device (shapes only, no memory or compute).
REAL_FORWARD = ["lenet5", "alexnet", "resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0"]


def assert_contract(name: str, backbone: backbones.Backbone, features: list[torch.Tensor], size: int) -> None:
    assert len(backbone.stages) == len(backbone.channels) == len(backbone.strides) == len(features)
    assert [f.shape[1] for f in features] == backbone.channels
    short = CELLS_SHORT.get(name, 0)
    assert [tuple(f.shape[-2:]) for f in features] == [(size // s - short,) * 2 for s in backbone.strides]
    assert backbone.strides == sorted(set(backbone.strides))


@pytest.mark.parametrize("name", backbones.names() + ["timm:resnet18d"])
def test_features_have_declared_channels_and_strides(name):
    with torch.device("meta"):
        backbone = backbones.build(name, pretrained=False).eval()
        features = backbone(torch.rand(2, 3, 64, 64))
    assert_contract(name, backbone, features, 64)


@pytest.mark.parametrize("name", REAL_FORWARD)
def test_real_forward_has_declared_channels_and_strides(name):
    backbone = backbones.build(name, pretrained=False).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 64))
    assert_contract(name, backbone, features, 64)
    assert all(torch.isfinite(f).all() for f in features)


def test_lenet_takes_32px_inputs_and_refuses_pretrained_weights():
    backbone = backbones.build("lenet5").eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in backbone(torch.rand(1, 3, 32, 32))] == [(1, 6, 16, 16), (1, 16, 8, 8)]
    with pytest.raises(ValueError, match="lenet5 has no pretrained weights"):
        backbones.build("lenet5", pretrained=True)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="mobilenet_v2.*vgg19_bn.*timm:<timm model name>"):
        backbones.build("mobilenet_v9")


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(ValueError, match="IMAGENET1K_V9.*valid: true \\(DEFAULT\\), IMAGENET1K_V1, IMAGENET1K_V2"):
        backbones.build("resnet50", pretrained="IMAGENET1K_V9")


@pytest.mark.parametrize(("name", "pretrained", "file_name"), [
    ("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth"),
    ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
    ("vgg16_bn", True, "vgg16_bn-6c64b313.pth"),
    ("tf_efficientnet_lite0", True, TIMM_CONVERTED_PACKAGES["tf_efficientnet_lite0"][0]),  # timm's loader
    ("seresnet50", True, "seresnet50_a1_0-ffa00869.pth"),
])
def test_missing_weight_file_fails_fast_naming_the_file(name, pretrained, file_name, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{file_name}.*make weights"):
        backbones.build(name, pretrained=pretrained)


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


def test_state_dict_file_loads_into_the_torchvision_model(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(weights=None).eval()
    path = tmp_path / "resnet18_trained.pth"
    torch.save(reference.state_dict(), path)
    backbone = backbones.build("resnet18", pretrained=str(path)).eval()
    image = torch.rand(1, 3, 64, 64)
    x = (image - backbone.mean) / backbone.std
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        assert torch.equal(backbone(image)[-1], expected)
