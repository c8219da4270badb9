"""Data as annotation tools export it trains without moving a file: the standard COCO layout
(annotations/ beside the image folders) and 16-bit images, through the real train and eval jobs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from datasets.shapes import generate_shapes
from pipeline.config.schema import parse_config
from pipeline.jobs.evaluate import run_eval
from pipeline.jobs.train import run_training


def standard_coco_layout(root: Path, split: str, images: int, seed: int) -> None:
    """root/annotations/instances_<split>.json + root/<split>2017/<file>, as COCO itself ships; the images
    re-saved as 16-bit PNGs holding 0-212 (a dim microscope camera's range)."""
    scratch = generate_shapes(root / f"scratch_{split}", num_images=images, image_size=48, seed=seed)
    coco = json.loads(scratch.read_text())
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    for entry in coco["images"]:
        grey = cv2.cvtColor(cv2.imread(str(scratch.parent / entry["file_name"])), cv2.COLOR_BGR2GRAY)
        entry["file_name"] = Path(entry["file_name"]).name
        cv2.imwrite(str(folder / entry["file_name"]), (grey.astype(np.float64) / 255 * 212).astype(np.uint16))
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    shutil.rmtree(scratch.parent)


def test_the_standard_coco_layout_with_16_bit_images_trains_and_evaluates(tmp_path):
    for split, count, seed in (("train", 8, 0), ("val", 4, 1)):
        standard_coco_layout(tmp_path / "coco", split, count, seed)
    raw = {
        "name": "layout", "output_dir": str(tmp_path / "runs"),
        "data": {"train": {"annotations": str(tmp_path / "coco/annotations/instances_train.json"),
                           "images": str(tmp_path / "coco/train2017")},
                 "val": {"annotations": str(tmp_path / "coco/annotations/instances_val.json"),
                         "images": str(tmp_path / "coco/val2017")},
                 "image_size": 48, "batch_size": 4, "num_workers": 0},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": {"seg": {"type": "unet"}, "det": {"type": "yolo"}}},
        "train": {"epochs": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "layouts"},
    }
    result, _ = run_training(parse_config(raw))
    assert result.checkpoint.is_file() and "seg/mIoU" in result.evaluation.metrics
    evaluation, out = run_eval(result.checkpoint, out_dir=tmp_path / "eval")
    assert evaluation.metrics == result.evaluation.metrics  # the checkpoint reads its data exactly as training did
    assert (out / "detections.json").is_file()
