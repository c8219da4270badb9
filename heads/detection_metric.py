"""COCO box mAP over a validation run, computed by pycocotools.

Predictions and ground truth are collected per image (on the CPU) and
scored once at the end, so the numbers match the official COCO evaluation.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.ops import box_convert

from datasets.sample import Batch


@dataclass
class _ImageRecord:
    gt_boxes: Tensor   # [N,4] xyxy
    gt_labels: Tensor  # [N] int64, 0..C-1
    ignore_boxes: Tensor   # [M,4] xyxy ignore regions, scored as COCO crowds (iscrowd=1)
    ignore_labels: Tensor  # [M]
    boxes: Tensor      # [K,4] xyxy
    scores: Tensor     # [K]
    labels: Tensor     # [K] int64, 0..C-1


class CocoDetectionMetric:
    """mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP@[.5:.95] ("AP/<class>").

    Images whose source has no box annotations (has_boxes False) are
    skipped; an image with has_boxes True and no boxes still counts, so
    detections on it are false positives. Ignore regions (crowds, "difficult"
    objects) go to pycocotools as iscrowd=1 annotations: a detection inside one
    is neither a hit nor a false positive, exactly as in the official evaluation.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._images: list[_ImageRecord] = []

    def update(self, predictions: list[dict[str, Tensor]], batch: Batch) -> None:
        for i, pred in enumerate(predictions):
            if not bool(batch.has_boxes[i]):
                continue
            self._images.append(_ImageRecord(
                gt_boxes=batch.boxes[i].detach().cpu().float(),
                gt_labels=batch.box_labels[i].detach().cpu().long(),
                ignore_boxes=batch.ignore_boxes[i].detach().cpu().float(),
                ignore_labels=batch.ignore_labels[i].detach().cpu().long(),
                boxes=pred["boxes"].detach().cpu().float(),
                scores=pred["scores"].detach().cpu().float(),
                labels=pred["labels"].detach().cpu().long(),
            ))

    def merge(self, other: CocoDetectionMetric) -> None:
        self._images += other._images

    def compute(self) -> dict[str, float]:
        """Scores everything seen since the last reset.

        Returns {} when no image had box annotations, or when those images
        hold no boxes at all: AP is undefined without any ground truth.
        """
        present = sorted({int(c) for r in self._images for c in r.gt_labels})
        if not present:
            return {}
        ground_truth = _coco_ground_truth(self._images, self.num_classes)
        detections = _coco_detections(self._images)
        if not detections:
            # loadRes cannot take an empty list; nothing found means AP 0.
            return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0, **{f"AP/{c}": 0.0 for c in present}}
        evaluation = _evaluate(ground_truth, detections)
        stats = evaluation.stats
        result = {"mAP": float(stats[0]), "mAP50": float(stats[1]), "mAP75": float(stats[2])}
        result.update(_per_class_ap(evaluation.eval["precision"], present))
        return result


def _xywh(boxes: Tensor) -> list[list[float]]:
    return box_convert(boxes, "xyxy", "xywh").tolist()


def _coco_ground_truth(images: list[_ImageRecord], num_classes: int) -> COCO:
    # Sequential image ids: source ids may collide across mixed datasets.
    annotations = []
    for image_id, record in enumerate(images, start=1):
        for boxes, labels, crowd in ((record.gt_boxes, record.gt_labels, 0),
                                     (record.ignore_boxes, record.ignore_labels, 1)):
            for box, label in zip(_xywh(boxes), labels.tolist()):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                    "bbox": box, "area": box[2] * box[3], "iscrowd": crowd,
                })
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i} for i in range(1, len(images) + 1)],
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_detections(images: list[_ImageRecord]) -> list[dict]:
    detections = []
    for image_id, record in enumerate(images, start=1):
        for box, score, label in zip(_xywh(record.boxes), record.scores.tolist(), record.labels.tolist()):
            detections.append({"image_id": image_id, "category_id": label + 1, "bbox": box, "score": score})
    return detections


def _evaluate(ground_truth: COCO, detections: list[dict]) -> COCOeval:
    # pycocotools reports progress with print(); keep test and training logs clean.
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, results, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _per_class_ap(precision: np.ndarray, classes: list[int]) -> dict[str, float]:
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets];
    # area "all" is index 0 and the largest max-dets (100) the last; -1 marks undefined.
    result = {}
    for c in classes:
        values = precision[:, :, c, 0, -1]
        valid = values[values > -1]
        result[f"AP/{c}"] = float(valid.mean()) if valid.size else 0.0
    return result
