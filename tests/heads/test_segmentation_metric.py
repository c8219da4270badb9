"""Segmentation metric: per-class IoU and Dice by hand; classes never seen are not reported."""
from __future__ import annotations

import math

import torch

from support import make_batch
from datasets.sample import IGNORE_INDEX
from heads.segmentation_metric import SegmentationMetric


def test_per_class_iou_and_dice_by_hand():
    batch = make_batch(size=4, batch=2, num_classes=1)
    batch.mask = torch.stack([torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [IGNORE_INDEX] * 4]),
                              torch.full((4, 4), 2)])
    batch.has_mask = torch.tensor([True, False])  # the second image (all class 2, predicted 0) has no mask
    pred = torch.stack([torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [2, 2, 2, 2]]),
                        torch.zeros(4, 4, dtype=torch.long)])
    metric = SegmentationMetric(num_classes=4)
    metric.update(pred, batch)
    result = metric.compute()
    # class 0: TP 7, FN 1 -> IoU 7/8, Dice 14/15; class 1: TP 4, FP 1 -> IoU 4/5, Dice 8/9.
    # The ignored row (predicted 2) counts nowhere, so classes 2 and 3 are never seen and not reported.
    assert set(result) == {"mIoU", "pixel_accuracy", "dice", "IoU/0", "IoU/1"}
    assert math.isclose(result["IoU/0"], 7 / 8, rel_tol=1e-5)
    assert math.isclose(result["IoU/1"], 4 / 5, rel_tol=1e-5)
    assert math.isclose(result["mIoU"], (7 / 8 + 4 / 5) / 2, rel_tol=1e-5)
    assert math.isclose(result["dice"], (14 / 15 + 8 / 9) / 2, rel_tol=1e-5)
    assert math.isclose(result["pixel_accuracy"], 11 / 12, rel_tol=1e-5)
