"""Metrics of the classification head (torchmetrics), single-label and multi-label.

Both take the head's decoded probabilities [B, C] and skip images whose target is missing.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAveragePrecision,
    MultilabelConfusionMatrix,
    MultilabelF1Score,
)

from datasets.sample import Batch

# Ranks merge their states explicitly (merge()), so torchmetrics must not sync on its own at compute().
LOCAL = {"sync_on_compute": False}


class ClassificationMetric:
    """"accuracy" (top-1), "top5" (only with more than 5 classes), "precision/<i>" and "recall/<i>" per class."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.accuracy = MulticlassAccuracy(num_classes, average="micro", **LOCAL)
        self.top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro", **LOCAL) if num_classes > 5 else None
        self.precision = MulticlassPrecision(num_classes, average=None, **LOCAL)  # a class never predicted scores 0
        self.recall = MulticlassRecall(num_classes, average=None, **LOCAL)
        self.confusion = MulticlassConfusionMatrix(num_classes, **LOCAL)
        self.seen = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        keep = batch.has_label.cpu()
        if not keep.any():
            return
        probs, labels = predictions.detach().cpu()[keep], batch.label.cpu()[keep]
        for metric in self._parts():
            metric.update(probs, labels)
        self.seen += int(keep.sum())

    def compute(self) -> dict[str, float]:
        if not self.seen:
            return {}
        result = {"accuracy": float(self.accuracy.compute())}
        if self.top5 is not None:
            result["top5"] = float(self.top5.compute())
        result |= _per_class("precision", self.precision.compute())
        result |= _per_class("recall", self.recall.compute())
        return result

    def merge(self, other: ClassificationMetric) -> None:
        for mine, theirs in zip(self._parts(), other._parts()):
            mine.merge_state(theirs)
        self.seen += other.seen

    def confusion_matrix(self) -> Tensor:
        """[C, C] int64 counts, rows = true class, columns = predicted class (an artifact, not a metric)."""
        return self.confusion.compute()

    def _parts(self) -> list:
        return [m for m in (self.accuracy, self.top5, self.precision, self.recall, self.confusion) if m is not None]


class MultiLabelMetric:
    """"mAP" and "f1" (threshold 0.5), each the mean over the classes with at least one positive target
    so far: a class absent from the data has no defined precision, and counting it as 0 would only
    measure how rare it is."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.average_precision = MultilabelAveragePrecision(num_classes, average=None, **LOCAL)
        self.f1 = MultilabelF1Score(num_classes, threshold=0.5, average=None, **LOCAL)
        self.confusion = MultilabelConfusionMatrix(num_classes, threshold=0.5, **LOCAL)
        self.positives = torch.zeros(num_classes, dtype=torch.long)
        self.seen = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        keep = batch.has_multi_label.cpu()
        if not keep.any():
            return
        probs, targets = predictions.detach().cpu()[keep], batch.multi_label.cpu()[keep].long()
        for metric in self._parts():
            metric.update(probs, targets)
        self.positives += targets.sum(dim=0)
        self.seen += int(keep.sum())

    def compute(self) -> dict[str, float]:
        present = self.positives > 0
        if not self.seen or not present.any():
            return {}
        with warnings.catch_warnings():  # classes without positives are left out below, on purpose
            warnings.filterwarnings("ignore", message="No positive samples")
            average_precision = self.average_precision.compute()
        return {"mAP": float(average_precision[present].mean()), "f1": float(self.f1.compute()[present].mean())}

    def merge(self, other: MultiLabelMetric) -> None:
        for mine, theirs in zip(self._parts(), other._parts()):
            mine.merge_state(theirs)
        self.positives += other.positives
        self.seen += other.seen

    def _parts(self) -> list:
        return [self.average_precision, self.f1, self.confusion]

    def confusion_matrix(self) -> Tensor:
        """[C, 2, 2] int64 per class, [[TN, FP], [FN, TP]] at threshold 0.5: multi-label has no single
        true class per image, so no [C, C] matrix."""
        return self.confusion.compute()


def _per_class(name: str, values: Tensor) -> dict[str, float]:
    return {f"{name}/{i}": float(v) for i, v in enumerate(values)}
