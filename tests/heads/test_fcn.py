"""FCN: bilinear-initialised learned upsampling, and which feature maps each variant fuses."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

import backbones
from backbones.base import Backbone
from backbones.vgg import classifier_fc
from support import CHANNELS, STRIDES, fake_features, make_batch
from heads.fcn import FCNHead, FCNOptions, bilinear_upsampler
from pipeline.config.schema import load_config, parse_config
from pipeline.model import build_model

NUM_CLASSES = 3


def fcn(variant: str, fc_channels: int = 16) -> FCNHead:
    torch.manual_seed(0)
    return FCNHead(CHANNELS, STRIDES, NUM_CLASSES, FCNOptions(variant=variant, fc_channels=fc_channels)).eval()


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_transposed_conv_starts_as_exact_bilinear_upsampling(factor):
    x = torch.randn(1, 3, 5, 4)
    with torch.no_grad():
        learned = bilinear_upsampler(3, factor)(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert learned.shape == reference.shape
    # Interpolation clamps at the border where the transposed conv sees zero padding: compare the interior.
    m = factor
    assert torch.allclose(learned[..., m:-m, m:-m], reference[..., m:-m, m:-m], atol=1e-5)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("height, width", [(64, 64), (70, 50)])
def test_output_is_full_resolution_logits(variant, height, width):
    # Feature maps as a padded backbone gives them for sizes that are not multiples of 32 (ceil).
    features = [torch.randn(2, c, math.ceil(height / s), math.ceil(width / s)) for c, s in zip(CHANNELS, STRIDES)]
    with torch.no_grad():
        out = fcn(variant)(features, torch.rand(2, 3, height, width))
    assert out.shape == (2, NUM_CLASSES + 1, height, width)


@pytest.mark.parametrize("changed_stride, changes", [(8, {"8s"}), (16, {"16s", "8s"}), (32, {"32s", "16s", "8s"})])
def test_each_variant_reads_only_its_own_feature_maps(changed_stride, changes):
    features, image = fake_features(2, 64), torch.rand(2, 3, 64, 64)
    changed = list(features)
    level = STRIDES.index(changed_stride)
    changed[level] = features[level] + torch.randn_like(features[level])
    for variant in ["32s", "16s", "8s"]:
        head = fcn(variant)
        for score in head.score[1:]:  # zero at init: give the skips a say
            torch.nn.init.normal_(score.weight)
        with torch.no_grad():
            differs = not torch.allclose(head(features, image), head(changed, image))
        assert differs == (variant in changes), f"{variant}: stride-{changed_stride} change seen: {differs}"


def test_variant_needing_a_missing_stride_is_refused():
    with pytest.raises(ValueError, match="stride 8"):
        FCNHead([8, 16, 32], [4, 16, 32], NUM_CLASSES, FCNOptions(variant="8s"))


# fc_as_conv: VGG's fc6/fc7 as 7x7 and 1x1 convolutions. The 4096-wide layers are heavy (120M parameters), so
# these tests keep maps at 64 px or less and build VGG-16 as few times as they can.
REPO = Path(__file__).resolve().parents[2]
VGG_CHANNELS = [64, 128, 256, 512, 512]


def small_vgg() -> models.VGG:
    """torchvision's VGG with its own random init, without conv features (its classifier is what is tested)."""
    torch.manual_seed(0)
    return models.VGG(nn.Sequential()).eval()


def fc_as_conv_head(vgg: models.VGG | None = None) -> FCNHead:
    """An FCN-32s fc_as_conv head; given a VGG, it adopts that VGG's fc6/fc7 as build_model has it do."""
    torch.manual_seed(0)
    head = FCNHead(VGG_CHANNELS, STRIDES, NUM_CLASSES, FCNOptions(variant="32s", fc_as_conv=True))
    if vgg is not None:
        stand_in = Backbone([nn.Identity()] * 5, VGG_CHANNELS, STRIDES, mean=(0.5,) * 3, std=(0.25,) * 3)
        stand_in.classifier_fc = classifier_fc(vgg)  # what backbones/vgg.py offers
        head.adopt_backbone(stand_in)
    return head


@pytest.mark.parametrize("side", [7, 9])
def test_fc6_fc7_as_convolutions_equal_the_vgg_classifier_on_each_7x7_window(side):
    # The paper's claim: the converted net is the classifier slid over the map. On a 7x7 pool5 map the centre
    # sees the whole map; on a larger one every position whose window fits inside sees its own 7x7 window.
    vgg = small_vgg()
    classifier, head = vgg.classifier, fc_as_conv_head(vgg).eval()
    pool5 = torch.rand(1, 512, side, side)  # after ReLU and max pooling: non-negative
    with torch.no_grad():
        dense = head.fc(pool5)
        for row in range(3, side - 3):
            for col in range(3, side - 3):
                window = pool5[:, :, row - 3:row + 4, col - 3:col + 4]
                expected = classifier[:6](window.flatten(1))  # fc6, ReLU, dropout, fc7, ReLU, dropout (eval)
                assert torch.allclose(dense[:, :, row, col], expected, rtol=1e-4, atol=1e-5), (row, col)
    assert dense.shape == (1, 4096, side, side)  # 'same' padding: the map keeps its size for the skips


def test_fc_as_conv_has_the_papers_layers():
    head = fc_as_conv_head()
    assert (head.fc.fc6.kernel_size, head.fc.fc6.padding, head.fc.fc6.in_channels) == ((7, 7), (3, 3), 512)
    assert (head.fc.fc7.kernel_size, head.fc.fc7.out_channels) == ((1, 1), 4096)
    assert [m.p for m in head.fc if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert head.score[0].in_channels == 4096


@pytest.fixture(scope="module")
def vgg16_fcn8s():
    """configs/heads/fcn8s_vgg16.yaml's model, and a torchvision VGG-16 built from the same seed as its backbone."""
    config = load_config(REPO / "configs/heads/fcn8s_vgg16.yaml")
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    reference = models.vgg16().classifier  # build_model builds the backbone first, so the same random init
    return model, reference


def test_config_with_vgg16_copies_the_classifier_into_fc6_fc7(vgg16_fcn8s):
    model, reference = vgg16_fcn8s
    fc = model.heads["seg"].fc
    assert torch.equal(fc.fc6.weight, reference[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(fc.fc6.bias, reference[0].bias)
    assert torch.equal(fc.fc7.weight, reference[3].weight.view(4096, 4096, 1, 1))
    assert torch.equal(fc.fc7.bias, reference[3].bias)
    # Adopted, then dropped: copies and pickles of the model do not carry the classifier a second time.
    assert model.backbone.classifier_fc is None
    assert not any("classifier" in key for key in model.state_dict())


def test_config_with_vgg16_takes_a_training_step(vgg16_fcn8s):
    model, _ = vgg16_fcn8s
    model.train()
    batch = make_batch(size=64, batch=2)
    terms = model.heads["seg"].loss(model(batch.image)["seg"], batch)
    loss = torch.stack(list(terms.values())).sum()
    model.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    assert model.heads["seg"].fc.fc6.weight.grad.abs().sum() > 0
    assert next(model.backbone.parameters()).grad is not None


def test_fc_as_conv_on_a_backbone_without_a_vgg_classifier_names_the_option():
    # ResNet-18's deepest map has 512 channels too: only the missing classifier tells it apart from VGG.
    config = parse_config({"data": {"train": "unused", "val": "unused", "image_size": 64},
                           "model": {"backbone": {"name": "resnet18", "pretrained": False},
                                     "heads": {"seg": {"type": "fcn", "fc_as_conv": True}}}})
    with pytest.raises(ValueError, match=r"model\.heads\.seg\.fc_as_conv: .*needs a VGG backbone"):
        build_model(config.model, num_classes=NUM_CLASSES)


def test_fc_as_conv_head_trains_on_one_batch():
    # Fixed pool5-like features that carry the mask, so the head alone must learn to read them (64 px: 2x2 maps).
    size = 64
    batch = make_batch(size=size, batch=2)
    one_hot = F.one_hot(batch.mask, NUM_CLASSES + 1).permute(0, 3, 1, 2).float()
    features = [F.avg_pool2d(one_hot, s).repeat(1, c // (NUM_CLASSES + 1), 1, 1) for c, s in zip(VGG_CHANNELS, STRIDES)]
    head = fc_as_conv_head(small_vgg()).train()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)  # no optimizer state: 120M parameters
    losses = []
    for _ in range(3):
        loss = torch.stack(list(head.loss(head(features, batch.image), batch).values())).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_vgg16_state_dict_is_its_convolutions_only():
    # The classifier rides on the backbone as a plain attribute: checkpoints keep their keys and still load.
    backbone = backbones.build("vgg16")
    convs_per_stage = [2, 2, 3, 3, 3]  # conv, ReLU pairs, then the stage's max pool
    expected = {f"stages.{stage}.{2 * i}.{name}" for stage, n in enumerate(convs_per_stage) for i in range(n)
                for name in ("weight", "bias")}
    assert set(backbone.state_dict()) == expected
    assert sum(t.numel() for t in backbone.state_dict().values()) == 14_714_688  # VGG-16's convolutions
    assert [tuple(w.shape) for w, _ in backbone.classifier_fc.layers] == [(4096, 25088), (4096, 4096)]
