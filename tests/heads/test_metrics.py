"""The dense-task metrics give the numbers their definitions give."""
from __future__ import annotations

import math

import torch

from support import make_batch
from datasets.sample import IGNORE_INDEX
from heads.autoencoder import ReconstructionMetric
from heads.classification import ClassificationMetric
from heads.segmentation_metric import SegmentationMetric


def test_psnr_of_a_known_error():
    batch = make_batch(size=32, batch=2)
    metric = ReconstructionMetric()
    metric.update((batch.image + 0.1).clamp(max=10), batch)  # every pixel off by 0.1: MSE 0.01
    result = metric.compute()
    assert math.isclose(result["mse"], 0.01, rel_tol=1e-4)
    assert math.isclose(result["psnr"], 20.0, rel_tol=1e-4)


def test_miou_by_hand_and_ignore_index_not_counted():
    batch = make_batch(size=4, batch=1, num_classes=1)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [IGNORE_INDEX] * 4]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]])
    batch.mask = target
    metric = SegmentationMetric(num_classes=2)
    metric.update(pred, batch)
    result = metric.compute()
    # class 0: 7 right of 8 target and 7 predicted -> IoU 7/8; class 1: IoU 4/5. The ignored row counts nowhere.
    assert math.isclose(result["mIoU"], (7 / 8 + 4 / 5) / 2, rel_tol=1e-5)
    assert math.isclose(result["pixel_accuracy"], 11 / 12, rel_tol=1e-5)


def test_accuracy_skips_images_without_labels():
    batch = make_batch(size=16, batch=3)
    probs = torch.nn.functional.one_hot(batch.label, 3).float()
    probs[2] = torch.tensor([0.0, 0.0, 1.0]) if batch.label[2] != 2 else torch.tensor([1.0, 0.0, 0.0])
    batch.has_label[2] = False  # the only wrong prediction is on an unlabelled image
    metric = ClassificationMetric(3)
    metric.update(probs, batch)
    assert metric.compute()["accuracy"] == 1.0
