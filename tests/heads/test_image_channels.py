"""Models for images of C != 3 channels (data.channels): the heads that read or output the image use C."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from datasets.sample import Batch
from heads.registry import HEADS, build
from heads.unet import UNetHead
from pipeline.engine.checkpoint import save_checkpoint
from pipeline.jobs.cli import main
from pipeline.config.schema import config_to_dict, parse_config
from pipeline.jobs.evaluate import model_from_checkpoint
from pipeline.model import build_model
from pipeline.tracking.plots import display_channels, model_prediction_figure
from pipeline.jobs.summary import load_target, report as run_summary
from support import CHANNELS, STRIDES, make_batch

NUM_CLASSES = 3
HEAD_CONFIG = {"seg": {"type": "unet"}, "rec": {"type": "ae"}, "cls": {"type": "classification"},
               "den": {"type": "dae"}, "gen": {"type": "vae"}}


def config(channels: int, heads: dict = HEAD_CONFIG, backbone: str = "resnet18", image_size: int = 64):
    return parse_config({"data": {"train": "unused", "val": "unused", "image_size": image_size, "channels": channels},
                         "model": {"backbone": {"name": backbone, "pretrained": False}, "heads": heads}})


def batch_of(channels: int, size: int = 64) -> Batch:
    """support.make_batch's targets, with images of `channels` channels: its grey level, or its RGB then more bands."""
    batch = make_batch(size=size, batch=2, num_classes=NUM_CLASSES)
    rgb = batch.image
    if channels == 1:
        image = rgb.mean(dim=1, keepdim=True)
    else:
        extra = torch.rand(len(rgb), max(channels - 3, 0), size, size, generator=torch.Generator().manual_seed(1))
        image = torch.cat([rgb, extra], dim=1)[:, :channels]
    return dataclasses.replace(batch, image=image)


@pytest.mark.parametrize("channels", [1, 5])
def test_model_trains_on_c_channel_images(channels):
    cfg = config(channels)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=NUM_CLASSES, in_channels=cfg.data.channels).train()
    batch = batch_of(channels)
    outputs = model(batch.image)
    assert outputs["seg"].shape == (2, NUM_CLASSES + 1, 64, 64)
    assert outputs["cls"].shape == (2, NUM_CLASSES)
    for task in ("rec", "den"):
        assert outputs[task].shape == (2, channels, 64, 64)
    assert outputs["gen"].reconstruction.shape == (2, channels, 64, 64)
    # U-Net's last step concatenates the C-channel image: its first conv takes C more channels than it outputs.
    unet = model.heads["seg"]
    assert isinstance(unet, UNetHead)
    assert unet.blocks[-1].convs[0][0].in_channels == unet.options.decoder_channels[-2] + channels
    terms = {f"{task}/{name}": value for task, head in model.heads.items()
             for name, value in head.loss(outputs[task], batch).items()}
    assert {"rec/mse", "den/mse", "gen/mse", "gen/kl"} <= set(terms) and any(k.startswith("seg/") for k in terms)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    torch.stack(list(terms.values())).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    first_conv = grads["backbone.stages.0.0.weight"]
    assert first_conv.shape[1] == channels and first_conv.abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values())
    model.eval()
    with torch.no_grad():
        decoded = model.heads["rec"].decode(model(batch.image)["rec"])
    assert decoded.shape == (2, channels, 64, 64) and 0 <= decoded.min() and decoded.max() <= 1


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_every_head_takes_the_image_channel_count(head_type):
    head = build(head_type, CHANNELS, STRIDES, NUM_CLASSES, HEADS[head_type].Options(), image_channels=1)
    default = build(head_type, CHANNELS, STRIDES, NUM_CLASSES, HEADS[head_type].Options())
    grey = sum(p.numel() for p in head.parameters())
    rgb = sum(p.numel() for p in default.parameters())
    if head_type in ("unet", "ae", "dae", "vae"):
        assert grey < rgb  # the image skip or the output conv shrank with the channels
    else:
        assert grey == rgb


def test_build_model_defaults_to_rgb():
    model = build_model(config(3, {"rec": {"type": "ae", "decoder_channels": [4, 4]}}, backbone="lenet5").model,
                        num_classes=NUM_CLASSES)
    assert model.backbone.in_channels == 3
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32))["rec"].shape == (1, 3, 32, 32)


@pytest.fixture(params=[1, 4])
def checkpoint(request, tmp_path):
    """A tiny lenet5 model of `channels` input channels with a VAE task, saved like the trainer's checkpoints."""
    channels = request.param
    heads = {"gen": {"type": "vae", "decoder_channels": [4, 4], "latent_channels": 2},
             "seg": {"type": "unet", "decoder_channels": [4, 4]}}
    cfg = config(channels, heads, backbone="lenet5", image_size=32)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=2, in_channels=channels)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "epoch": 1, "config": config_to_dict(cfg),
                     "class_names": ["a", "b"], "category_ids": [1, 2], "metrics": {}}, path)
    return path, channels, model


def test_checkpoint_of_c_channels_evaluates_and_samples(checkpoint, tmp_path):
    path, channels, trained = checkpoint
    model, _ = model_from_checkpoint(path)
    assert model.backbone.in_channels == channels
    image = torch.rand(2, channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(image)["seg"], trained.eval()(image)["seg"])
    assert model.heads["gen"].sample(2, 32).shape == (2, channels, 32, 32)
    out = tmp_path / "grid.png"
    assert main(["sample", str(path), "--task", "gen", "--num", "4", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (2 + 2 * (32 + 2),) * 2 and grid.mode == "RGB"


def test_backbone_from_a_c_channel_runs_checkpoint(checkpoint):
    path, channels, trained = checkpoint
    cfg = config(channels, {"seg": {"type": "unet", "decoder_channels": [4, 4]}}, backbone="lenet5")
    cfg.model.backbone.pretrained = str(path)
    model = build_model(cfg.model, num_classes=2, in_channels=channels)
    expected = trained.backbone.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("channels", [1, 5])
def test_prediction_figure_shows_c_channel_images(channels):
    cfg = config(channels, {"seg": {"type": "unet", "decoder_channels": [4, 4]}, "rec": {"type": "ae",
                 "decoder_channels": [4, 4]}, "cls": {"type": "classification"}}, backbone="lenet5")
    model = build_model(cfg.model, num_classes=NUM_CLASSES, in_channels=channels)
    figure = model_prediction_figure(model, batch_of(channels, 32), ["a", "b", "c"])
    images = [image for axes in figure.axes for image in axes.get_images()]
    shown = images[0].get_array()
    assert shown.shape == ((32, 32) if channels == 1 else (32, 32, 3))
    figure.canvas.draw()  # renders without error
    assert display_channels(torch.rand(2, 2, 8, 8)).shape == (2, 1, 8, 8)


def test_summary_uses_the_configs_channels_and_adapts_a_backbone_to_the_input(tmp_path):
    path = tmp_path / "grey.yaml"
    path.write_text("data: {train: unused, val: unused, image_size: 64, channels: 1}\n"
                    "model: {backbone: {name: lenet5}, heads: {rec: {type: ae, decoder_channels: [4, 4]}}}\n")
    target = load_target(str(path), classes=2)
    assert target.default_input == (1, 64, 64) and target.model.backbone.in_channels == 1
    text = run_summary(str(path), "32", classes=2)  # a bare size takes the config's channels
    assert "input 1x1x32x32" in text
    assert [line.split()[3] for line in text.splitlines() if line.startswith("backbone.stages.0.0 ")] == ["156"]
    text = run_summary("lenet5", "4x32x32")  # a backbone is adapted to the input's channels
    assert "4 input channels" in text and "input 1x4x32x32" in text
    assert [line.split()[3] for line in text.splitlines() if line.startswith("stages.0.0 ")] == ["606"]  # 6*4*25+6
