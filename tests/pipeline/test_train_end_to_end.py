"""A real 2-epoch run on a tiny shapes set: MLflow run, checkpoint, eval, detections file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pycocotools.coco import COCO

from pipeline.config.schema import parse_config
from pipeline.jobs.evaluate import run_eval
from pipeline.jobs.train import run_training

REPO = Path(__file__).resolve().parents[2]
TASK_METRICS = ["val/cls/accuracy", "val/seg/mIoU", "val/det/mAP", "val/det/mAP50", "val/recon/psnr"]
TASK_LOSSES = ["train/cls/loss", "train/seg/loss", "train/det/loss", "train/recon/loss", "train/loss"]


def tiny_config(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 64, "batch_size": 8, "num_workers": 0,
                 "shapes": {"train_images": 16, "val_images": 8}},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"},
                            "det": {"type": "yolo"}, "recon": {"type": "ae"}}},
        "train": {"epochs": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "e2e"},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    raw = tiny_config(tmp_path)
    result, run_id = run_training(parse_config(raw))
    return tmp_path, raw, result, run_id


def test_run_is_tracked_with_every_task_metric_per_epoch(trained):
    tmp_path, raw, _, run_id = trained
    client = MlflowClient(tracking_uri=raw["tracking"]["uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.heads.det.type"] == "yolo"
    # 16 images in batches of 8: 2 optimiser steps per epoch. Losses and lr every step, the rest per epoch.
    for key in TASK_LOSSES + ["lr"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4], key
    for key in TASK_METRICS + [f"epoch/{k}" for k in TASK_LOSSES] + ["system/images_per_second"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [2, 4], key
    artifacts = {a.path for folder in (None, "checkpoints", "plots") for a in client.list_artifacts(run_id, folder)}
    assert {"config.yaml", "checkpoints/last.pt", "plots/losses.png", "plots/predictions.png"} <= artifacts
    assert run.data.tags["data.train.sha256"] and run.data.tags["git.dirty"] in ("true", "false", "unknown")
    # Artifacts stay beside the sqlite store, never in the working directory.
    assert (tmp_path / "artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()


def test_checkpoint_reloads_to_identical_eval_numbers_and_writes_coco_detections(trained):
    tmp_path, raw, result, _ = trained
    evaluation, out = run_eval(result.checkpoint, out_dir=tmp_path / "eval")
    assert evaluation.metrics == result.evaluation.metrics
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(result.evaluation.metrics)
    detections = json.loads((out / "detections.json").read_text())
    ground_truth = COCO(raw["data"]["val"])
    if detections:  # a 2-epoch model may find nothing; the format is checked whenever it does
        assert set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
        scored = ground_truth.loadRes(str(out / "detections.json"))
        assert set(scored.getImgIds()) <= set(ground_truth.getImgIds())
        assert {d["category_id"] for d in detections} <= set(ground_truth.getCatIds())


def test_cli_reports_a_config_typo_with_the_nearest_key(tmp_path):
    config = tmp_path / "typo.yaml"
    raw = tiny_config(tmp_path)
    raw["train"] = {"epocs": 2}
    config.write_text(json.dumps(raw))  # JSON is YAML
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "train.epocs: unknown key. Did you mean 'epochs'?" in done.stderr
    assert not (tmp_path / "data").exists()  # failed before touching data
