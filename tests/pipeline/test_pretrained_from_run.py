"""Autoencoder pre-training, then transfer: a later run starts from an earlier run's backbone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.engine.checkpoint import load_checkpoint
from pipeline.config.schema import parse_config
from pipeline.model import build_model
from pipeline.tracking.run_artifacts import with_local_weights
from pipeline.jobs.train import run_training


def config(tmp_path: Path, heads: dict, pretrained) -> dict:
    data = tmp_path / "data"
    return {
        "name": "pretrain", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": 8, "num_workers": 0, "shapes": {"train_images": 8, "val_images": 4}},
        "model": {"backbone": {"name": "resnet18", "pretrained": pretrained}, "heads": heads},
        "train": {"epochs": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "pretrain"},
    }


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pretrain")
    result, run_id = run_training(parse_config(config(tmp_path, {"recon": {"type": "ae"}}, False)))
    return tmp_path, result.checkpoint, run_id


def backbone_of_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)["model"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("reference", ["path", "run_uri"])
def test_supervised_model_starts_from_the_pretraining_runs_backbone(pretrained_run, reference):
    tmp_path, checkpoint, run_id = pretrained_run
    pretrained = str(checkpoint) if reference == "path" else f"runs:/{run_id}"
    raw = config(tmp_path, {"seg": {"type": "unet"}}, pretrained)
    model_config = with_local_weights(parse_config(raw).model, raw["tracking"]["uri"])
    model = build_model(model_config, num_classes=3)
    expected = backbone_of_checkpoint(checkpoint)
    got = model.backbone.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_unknown_run_is_a_clear_error(pretrained_run):
    tmp_path, _, _ = pretrained_run
    raw = config(tmp_path, {"seg": {"type": "unet"}}, "runs:/0123456789abcdef")
    with pytest.raises(FileNotFoundError, match="cannot fetch runs:/0123456789abcdef/checkpoints/last.pt"):
        with_local_weights(parse_config(raw).model, raw["tracking"]["uri"])
