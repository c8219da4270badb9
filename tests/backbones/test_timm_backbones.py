"""timm backbones: chained stages over FeatureListNet, offline weights through timm's own loader."""
from __future__ import annotations

import pytest
import timm
import torch

import backbones
from backbones.convert_weights import to_timm_keys
from backbones.weights import TIMM_CONVERTED_PACKAGES, load_state_dict_file, require_cached, seed_hub_cache

LITE0_FILE = TIMM_CONVERTED_PACKAGES["tf_efficientnet_lite0"][0]


def lite0_reference_features(image: torch.Tensor) -> list[torch.Tensor]:
    """A plain timm tf_efficientnet_lite0 with the converted weights, tapped after blocks 0, 1, 2, 4, 6."""
    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(load_state_dict_file(require_cached(LITE0_FILE)))  # strict: every key converted
    x = model.bn1(model.conv_stem((image - 0.5) / 0.5))  # timm's pretrained_cfg mean = std = 0.5
    features = []
    for index, block in enumerate(model.blocks):
        x = block(x)
        if index in (0, 1, 2, 4, 6):
            features.append(x)
    return features


def test_converted_lite0_weights_match_a_plain_timm_model(no_network):
    backbone = backbones.build("tf_efficientnet_lite0", pretrained=True).eval()
    assert backbone.mean.flatten().tolist() == [0.5, 0.5, 0.5] and backbone.std.flatten().tolist() == [0.5, 0.5, 0.5]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, reference = backbone(image), lite0_reference_features(image)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_file_path_loads_that_timm_state_dict(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(load_state_dict_file(require_cached(LITE0_FILE)), path)
    from_file = backbones.build("timm:tf_efficientnet_lite0", pretrained=str(path)).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_file(image)[-1], lite0_reference_features(image)[-1])


def test_a_file_of_another_model_is_refused():
    with pytest.raises(ValueError, match="not a state dict of timm's tf_efficientnet_lite0"):
        backbones.build("tf_efficientnet_lite0", pretrained=str(require_cached("mobilenet_v2-b0353104.pth")))


def test_stages_are_the_feature_nets_children_in_order():
    with torch.device("meta"):
        backbone = backbones.build("seresnet50")
    assert backbone.strides == [2, 4, 8, 16, 32] and backbone.channels == [64, 256, 512, 1024, 2048]
    assert [[type(m).__name__ for m in stage] for stage in backbone.stages[:2]] == [
        ["Conv2d", "BatchNorm2d", "ReLU"], ["MaxPool2d", "Sequential"]]


def test_unknown_tag_lists_valid_ones():
    with pytest.raises(ValueError, match="'nope'.*valid: true, .*a1_in1k"):
        backbones.build("seresnet50", pretrained="nope")


def test_unknown_or_unchainable_timm_models_are_clear_errors():
    with pytest.raises(ValueError, match="unknown timm model 'resnet9000'"):
        backbones.build("timm:resnet9000")
    with pytest.raises(ValueError, match="vit_tiny_patch16_224"):
        backbones.build("timm:vit_tiny_patch16_224")


def test_conversion_checks_every_shape_and_names_both_keys():
    source = load_state_dict_file(require_cached(LITE0_FILE))  # already timm-keyed: the pairing is the same
    source["conv_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"source conv_head.weight \(3, 3\).*timm's conv_head.weight"):
        to_timm_keys(source, "tf_efficientnet_lite0")


def test_seeding_writes_the_converted_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seeded = seed_hub_cache()
    assert sorted(p.name for p in seeded) == sorted(["mobilenet_v2-b0353104.pth", LITE0_FILE])
    converted = load_state_dict_file(require_cached(LITE0_FILE))
    with torch.device("meta"):
        expected = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert list(converted) == list(expected)
    assert [p.name for p in seeded[0].parent.iterdir() if p.name.startswith(".")] == []  # no temp files left
    stamp = require_cached(LITE0_FILE).stat().st_mtime_ns
    seed_hub_cache()
    assert require_cached(LITE0_FILE).stat().st_mtime_ns == stamp
