"""Backbones for images of C != 3 channels: the first convolution and the normalisation adapted (data.channels)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models._manipulate import adapt_input_conv

import backbones
from backbones.input_channels import adapt_input_channels, first_conv
from backbones.weights import require_cached

# One representative per family, each with its own stem: LeNet's own conv, AlexNet's unpadded 11x11, VGG,
# GoogLeNet's BasicConv2d (transform_input unused), ResNet, MobileNetV2/V3, ShuffleNet, EfficientNet, timm.
FAMILIES = ["lenet5", "alexnet", "vgg11", "googlenet", "resnet18", "mobilenet_v2", "mobilenet_v3_small",
            "shufflenet_v2_x1_0", "efficientnet_b0", "tf_efficientnet_lite0", "timm:resnet10t"]
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def built(name: str, in_channels: int = 3, pretrained=False) -> backbones.Backbone:
    torch.manual_seed(0)  # the same random init for every channel count: adaptation draws no random numbers
    return backbones.build(name, pretrained=pretrained, in_channels=in_channels).eval()


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_takes_c_channels_with_the_rgb_models_maps(name, in_channels):
    rgb, adapted = built(name), built(name, in_channels)
    assert (adapted.channels, adapted.strides) == (rgb.channels, rgb.strides)
    assert adapted.in_channels == in_channels and rgb.in_channels == 3
    with torch.no_grad():
        expected = [f.shape[1:] for f in rgb(torch.rand(2, 3, 64, 64))]
        features = adapted(torch.rand(2, in_channels, 64, 64))
    assert [f.shape[1:] for f in features] == expected
    assert all(torch.isfinite(f).all() for f in features)
    # The first conv is timm's adaptation of the RGB one; the rest of the network is untouched.
    key, conv = first_conv(adapted)
    assert conv.in_channels == in_channels
    assert torch.equal(conv.weight, adapt_input_conv(in_channels, first_conv(rgb)[1].weight.detach()))
    rgb_state, state = rgb.state_dict(), adapted.state_dict()
    assert all(torch.equal(rgb_state[k], state[k]) for k in state if k != f"{key}.weight")


def test_single_channel_sums_the_rgb_kernels_and_averages_the_statistics():
    rgb, grey = built("resnet18"), built("resnet18", 1)
    weight = first_conv(rgb)[1].weight
    assert torch.allclose(first_conv(grey)[1].weight, weight.sum(dim=1, keepdim=True))
    assert torch.allclose(grey.mean.flatten(), IMAGENET_MEAN.mean().view(1))
    assert torch.allclose(grey.std.flatten(), IMAGENET_STD.mean().view(1))


@pytest.mark.parametrize("in_channels", [2, 4, 7])
def test_more_channels_repeat_the_kernels_scaled_and_keep_rgb_statistics_first(in_channels):
    rgb, adapted = built("resnet18"), built("resnet18", in_channels)
    weight = first_conv(rgb)[1].weight
    expected = torch.cat([weight] * 3, dim=1)[:, :in_channels] * (3 / in_channels)
    assert torch.allclose(first_conv(adapted)[1].weight, expected)
    extra = max(in_channels - 3, 0)
    rgb_part = min(in_channels, 3)
    assert torch.allclose(adapted.mean.flatten(), torch.cat([IMAGENET_MEAN[:rgb_part], IMAGENET_MEAN.mean().repeat(extra)]))
    assert torch.allclose(adapted.std.flatten(), torch.cat([IMAGENET_STD[:rgb_part], IMAGENET_STD.mean().repeat(extra)]))


@pytest.mark.parametrize("name", ["lenet5", "googlenet"])
def test_grey_is_exact_when_the_rgb_statistics_are_equal(name):
    """mean = std = 0.5 in every channel (LeNet, GoogLeNet): summing the kernels is exactly the RGB model on
    the grey image replicated, for any weights."""
    rgb, grey = built(name), built(name, 1)
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(rgb(image.expand(-1, 3, -1, -1)), grey(image)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


def cosines(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    """Per stage, the smallest over the batch of the cosine similarity of the flattened maps."""
    return [F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1).min().item() for x, y in zip(a, b)]


def test_pretrained_grey_model_sees_a_grey_image_as_the_rgb_model_sees_it_replicated():
    """ImageNet mobilenet_v2: not exact, because the RGB means differ (0.485, 0.456, 0.406); the RGB model
    adds sum_c W_c (m_c - mean m) / s_c to each filter, large for colour-opponent filters, whose response
    to grey is otherwise near 0. (The stds differ by under 2%, a far smaller effect: folding them into the
    kernels exactly moves the last stage's similarity by 0.01 only.) The error grows with depth. Measured
    here (smooth random grey images, cosine similarity per stage, min over the batch): 0.995, 0.997, 0.992,
    0.986, 0.919 (relative L2 error 0.10 ... 0.28); with the first conv re-initialised at random instead:
    0.58, 0.19, 0.29, 0.28, 0.07. The bounds leave a margin above the former and far above the latter."""
    require_cached("mobilenet_v2-b0353104.pth")  # `make test` seeds it
    rgb, grey = built("mobilenet_v2", 3, "IMAGENET1K_V1"), built("mobilenet_v2", 1, "IMAGENET1K_V1")
    generator = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(8, 1, 8, 8, generator=generator), size=64, mode="bilinear")
    with torch.no_grad():
        expected = rgb(image.expand(-1, 3, -1, -1))
        similarity = cosines(expected, grey(image))
        random_stem = built("mobilenet_v2", 1, "IMAGENET1K_V1")
        torch.nn.init.kaiming_normal_(first_conv(random_stem)[1].weight, mode="fan_out")
        baseline = cosines(expected, random_stem(image))
    assert min(similarity[:4]) > 0.97 and similarity[-1] > 0.9, similarity
    assert all(s > b + 0.2 for s, b in zip(similarity, baseline)), (similarity, baseline)


def save_run_checkpoint(backbone: backbones.Backbone, path) -> None:
    """What a training run's checkpoint holds: the MultiTaskModel's state dict (backbone.* keys) under "model"."""
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "epoch": 1}, path)


@pytest.mark.parametrize("in_channels", [1, 5])
def test_a_c_channel_runs_checkpoint_loads_as_pretrained_weights(in_channels, tmp_path):
    torch.manual_seed(1)
    trained = backbones.build("resnet18", in_channels=in_channels).eval()
    path = tmp_path / "last.pt"
    save_run_checkpoint(trained, path)
    loaded = built("resnet18", in_channels, pretrained=str(path))
    assert loaded.in_channels == in_channels
    expected, got = trained.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    image = torch.rand(1, in_channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(image)[-1], trained(image)[-1])


def test_an_rgb_runs_checkpoint_loads_then_is_adapted(tmp_path):
    torch.manual_seed(1)
    trained = backbones.build("resnet18").eval()
    path = tmp_path / "last.pt"
    save_run_checkpoint(trained, path)
    grey = built("resnet18", 1, pretrained=str(path))
    assert torch.allclose(first_conv(grey)[1].weight, first_conv(trained)[1].weight.sum(dim=1, keepdim=True))
    assert torch.equal(grey.state_dict()["stages.4.1.conv2.weight"], trained.state_dict()["stages.4.1.conv2.weight"])


def test_a_checkpoint_of_another_channel_count_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_run_checkpoint(backbones.build("resnet18", in_channels=4), path)
    with pytest.raises(ValueError, match="takes 4 image channels.*not one of 1"):
        backbones.build("resnet18", pretrained=str(path), in_channels=1)


def test_bad_channel_counts_are_refused():
    with pytest.raises(ValueError, match="positive channel count"):
        backbones.build("lenet5", in_channels=0)
    with pytest.raises(ValueError, match="already takes 1 channels"):
        adapt_input_channels(backbones.build("lenet5", in_channels=1), 4)
