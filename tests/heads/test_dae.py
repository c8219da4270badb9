from __future__ import annotations

import pytest
import torch

import backbones
from heads.autoencoder import AutoencoderHead, AutoencoderOptions
from heads.denoising_autoencoder import DenoisingAutoencoderHead, DenoisingOptions
from pipeline.model import MultiTaskModel
from support import CHANNELS, STRIDES, make_batch


def dae(**options) -> DenoisingAutoencoderHead:
    return DenoisingAutoencoderHead(CHANNELS, STRIDES, 3, DenoisingOptions([8, 8, 8], bottleneck_stride=8, **options))


def test_masking_zeroes_whole_grid_patches_in_every_channel_and_nothing_else():
    image = torch.rand(2, 3, 36, 36) * 0.8 + 0.1  # no pixel is 0 before masking
    torch.manual_seed(0)
    corrupted = dae(noise_std=0.0, mask_fraction=0.5, mask_patch=8).corrupt(image)
    zeroed = corrupted == 0
    assert torch.equal(corrupted[~zeroed], image[~zeroed])
    assert torch.equal(zeroed, zeroed[:, :1].expand_as(zeroed))  # same cells in every channel
    cells = zeroed[:, 0, ::8, ::8]  # one pixel per cell of the 8 px grid (5 x 5, the last ones partial)
    assert torch.equal(zeroed[:, 0], cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :36, :36])
    assert 0.2 < cells.float().mean().item() < 0.8


def test_noise_changes_the_image_within_unit_range_and_reproduces_under_a_seed():
    image = torch.rand(2, 3, 32, 32)
    head = dae(noise_std=0.1, mask_fraction=0.0)
    torch.manual_seed(5)
    first = head.corrupt(image)
    torch.manual_seed(5)
    assert torch.equal(first, head.corrupt(image))
    assert not torch.equal(first, head.corrupt(image))
    assert 0 <= first.min() and first.max() <= 1
    assert 0.05 < (first - image).std().item() < 0.1  # std 0.1, less where clamped at 0 or 1


def test_loss_target_is_the_clean_image():
    head = dae()
    batch = make_batch(size=32, batch=2)
    assert head.loss(batch.image, batch)["mse"].item() == 0.0
    torch.manual_seed(0)
    assert head.loss(head.corrupt(batch.image), batch)["mse"].item() > 0.0


def test_bad_corruption_options_are_rejected():
    with pytest.raises(ValueError, match="mask_fraction"):
        dae(mask_fraction=1.0)


def test_model_feeds_the_dae_features_of_the_corrupted_image_and_the_other_heads_clean_ones():
    torch.manual_seed(0)
    backbone = backbones.build("lenet5")
    ae = AutoencoderHead(backbone.channels, backbone.strides, 3, AutoencoderOptions([4, 4]))
    denoising = DenoisingAutoencoderHead(backbone.channels, backbone.strides, 3, DenoisingOptions([4, 4]))
    denoising.load_state_dict(ae.state_dict())  # same weights: outputs differ only by their input
    model = MultiTaskModel(backbone, {"ae": ae, "dae": denoising})
    image = make_batch(size=32, batch=2).image

    model.eval()
    with torch.no_grad():
        clean = model(image)
        assert torch.equal(clean["ae"], clean["dae"])  # no corruption in eval

        model.train()
        torch.manual_seed(1)
        outputs = model(image)
        torch.manual_seed(1)
        corrupted = denoising.corrupt(image)
        assert torch.allclose(outputs["dae"], denoising(backbone(corrupted), corrupted))
        assert torch.allclose(outputs["ae"], ae(backbone(image), image))
        assert not torch.allclose(outputs["dae"], outputs["ae"])
