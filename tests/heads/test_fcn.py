"""FCN: bilinear-initialised learned upsampling, and which feature maps each variant fuses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from support import CHANNELS, STRIDES, fake_features
from heads.fcn import FCNHead, FCNOptions, bilinear_upsampler

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
