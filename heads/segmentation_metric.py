"""What the segmentation heads are judged by: mIoU, IoU per class, pixel accuracy and Dice (torchmetrics).

Images without a mask are skipped and IGNORE_INDEX pixels count nowhere. Classes are 0 (background) .. C.
"""
from __future__ import annotations

import math

from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from datasets.sample import IGNORE_INDEX, Batch

# Ranks merge their states explicitly (merge()), so torchmetrics must not sync on its own at compute().
LOCAL = {"sync_on_compute": False}


class SegmentationMetric:
    """compute() -> {"mIoU", "pixel_accuracy", "dice", "IoU/<class>" for each class seen in targets or predictions}.

    mIoU and Dice average over the classes seen; Dice is per-pixel F1 (2TP / (2TP + FP + FN)) over the whole set.
    """

    def __init__(self, num_classes: int) -> None:
        self.iou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX, **LOCAL)
        # NaN for a class that never occurs, so it can be left out of the report rather than shown as 0.
        self.class_iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX,
                                                zero_division=math.nan, **LOCAL)
        self.pixel_accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX, **LOCAL)
        self.dice = MulticlassF1Score(num_classes, average="macro", ignore_index=IGNORE_INDEX, **LOCAL)
        self.seen = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        keep = batch.has_mask.cpu()
        if keep.any():
            preds, target = predictions.detach().cpu()[keep], batch.mask.cpu()[keep]
            for metric in self._parts():
                metric.update(preds, target)
            self.seen += int(keep.sum())

    def merge(self, other: SegmentationMetric) -> None:
        for mine, theirs in zip(self._parts(), other._parts()):
            mine.merge_state(theirs)
        self.seen += other.seen

    def _parts(self) -> list:
        return [self.iou, self.class_iou, self.pixel_accuracy, self.dice]

    def compute(self) -> dict[str, float]:
        if not self.seen:
            return {}
        result = {"mIoU": float(self.iou.compute()), "pixel_accuracy": float(self.pixel_accuracy.compute()),
                  "dice": float(self.dice.compute())}
        for index, iou in enumerate(self.class_iou.compute().tolist()):
            if not math.isnan(iou):
                result[f"IoU/{index}"] = iou
        return result
