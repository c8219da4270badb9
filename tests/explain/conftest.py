"""A classifier trained on one-shape-per-image shapes data: what the explain measurements run on.

Pretrained MobileNetV2 at 96 px for 6 epochs (~30 s on two CPU cores) reaches ~0.85 val accuracy, enough for
its attributions to be about the shape rather than noise."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.schema import parse_config
from pipeline.inference.trained import TrainedModel, load_trained
from pipeline.jobs.train import run_training


def classifier_config(folder: Path) -> dict:
    data = folder / "data"
    return {
        "name": "shapes_classifier", "seed": 0, "output_dir": str(folder / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 96, "batch_size": 16, "num_workers": 0,
                 "shapes": {"train_images": 240, "val_images": 40, "max_shapes": 1}},
        "model": {"backbone": {"name": "mobilenet_v2", "pretrained": "IMAGENET1K_V1"},
                  "heads": {"cls": {"type": "classification"}}},
        "train": {"epochs": 6, "device": "cpu", "optimizer": {"name": "adamw", "lr": 0.002}},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": "explain"},
    }


@pytest.fixture(scope="session")
def shapes_classifier(tmp_path_factory) -> TrainedModel:
    folder = tmp_path_factory.mktemp("explain")
    result, _ = run_training(parse_config(classifier_config(folder)))
    return load_trained(result.checkpoint)
