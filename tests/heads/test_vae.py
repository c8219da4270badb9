from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from heads.autoencoder import AutoencoderHead
from heads.registry import HEADS
from heads.vae import VAEHead, VAEOptions, VAEOutput, gaussian_kl
from pipeline.engine.checkpoint import save_checkpoint
from pipeline.jobs.cli import main
from pipeline.config.schema import config_to_dict, parse_config
from pipeline.model import build_model
from support import CHANNELS, STRIDES, fake_features, make_batch


def small_vae(**options) -> VAEHead:
    torch.manual_seed(0)
    return VAEHead(CHANNELS, STRIDES, 3, VAEOptions([8, 8, 8], bottleneck_stride=8, latent_channels=4, **options))


def test_kl_is_zero_for_the_prior_positive_otherwise_and_matches_the_closed_form():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.equal(gaussian_kl(zeros, zeros), zeros)
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - ln s^2) / 2
    kl = gaussian_kl(torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, math.log(2.0), math.log(0.5)]))
    expected = torch.tensor([0.5, (2 - 1 - math.log(2)) / 2, (4 + 0.5 - 1 - math.log(0.5)) / 2])
    assert torch.allclose(kl, expected)
    assert (gaussian_kl(torch.randn(50), torch.randn(50)) > 0).all()


def test_loss_returns_mse_and_beta_weighted_mean_kl():
    head = small_vae(beta=0.01)
    batch = make_batch(size=32, batch=2)
    mu, logvar = torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)  # KL 0.5 per latent element
    terms = head.loss(VAEOutput(batch.image, mu, logvar), batch)
    assert set(terms) == {"mse", "kl"}
    assert terms["mse"].item() == 0.0
    assert math.isclose(terms["kl"].item(), 0.01 * 0.5, rel_tol=1e-6)
    prior = head.loss(VAEOutput(batch.image + 0.1, mu * 0, logvar), batch)
    assert prior["kl"].item() == 0.0 and math.isclose(prior["mse"].item(), 0.01, rel_tol=1e-4)


def test_latent_is_sampled_in_training_and_the_mean_in_eval():
    head = small_vae()
    features, image = fake_features(2, 32), torch.rand(2, 3, 32, 32)
    out = head.eval()(features, image)
    assert out.mu.shape == out.logvar.shape == (2, 4, 4, 4)
    assert out.reconstruction.shape == (2, 3, 32, 32)
    assert torch.equal(head(features, image).reconstruction, out.reconstruction)
    assert torch.equal(head.decode(out), out.reconstruction)
    assert torch.equal(head.reparameterize(out.mu, out.logvar), out.mu)
    head.train()
    z1, z2 = head.reparameterize(out.mu, out.logvar), head.reparameterize(out.mu, out.logvar)
    assert not torch.equal(z1, z2)
    # eps * exp(logvar / 2): the spread follows the posterior's std
    wide = head.reparameterize(torch.zeros(10000), torch.full((10000,), math.log(4.0)))
    assert 1.9 < wide.std().item() < 2.1


def test_sample_gives_images_of_the_asked_size_in_unit_range_reproducibly():
    head = small_vae().train()
    images = head.sample(3, 40, torch.Generator().manual_seed(1))
    assert images.shape == (3, 3, 40, 40) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, head.sample(3, 40, torch.Generator().manual_seed(1)))
    assert not torch.equal(images, head.sample(3, 40, torch.Generator().manual_seed(2)))
    assert head.training  # sample() decodes in eval mode but leaves the head as it was


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A tiny lenet5 model with a VAE task "gen" and an autoencoder task "rec", saved like the trainer's checkpoints."""
    monkeypatch.setitem(HEADS, "vae", VAEHead)
    monkeypatch.setitem(HEADS, "ae", AutoencoderHead)
    heads = {"gen": {"type": "vae", "decoder_channels": [4, 4], "latent_channels": 2},
             "rec": {"type": "ae", "decoder_channels": [4, 4]}}
    config = parse_config({"data": {"train": "unused", "val": "unused", "image_size": 32},
                           "model": {"backbone": {"name": "lenet5"}, "heads": heads}})
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=2)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "epoch": 1, "config": config_to_dict(config),
                     "class_names": ["a", "b"], "category_ids": [1, 2], "metrics": {}}, path)
    return path


def test_sample_command_writes_a_png_grid(checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(checkpoint), "--task", "gen", "--num", "4", "--out", str(out), "--seed", "3"]) == 0
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.size == (2 + 2 * (32 + 2),) * 2  # 2 x 2 images of 32 px, 2 px padding
    assert main(["sample", str(checkpoint), "--task", "gen", "--num", "1"]) == 0
    assert (checkpoint.parent / "samples.png").is_file()


def test_sample_command_rejects_a_task_that_is_not_a_vae(checkpoint, capsys):
    assert main(["sample", str(checkpoint), "--task", "rec"]) == 2
    assert "not a VAE head; VAE tasks here: gen" in capsys.readouterr().err
    assert main(["sample", str(checkpoint), "--task", "nope"]) == 2
    assert "no task 'nope'" in capsys.readouterr().err
