"""Image classification: global pooling -> dropout -> linear, on the deepest features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from datasets.sample import Batch
from heads.base import Head, zero_loss


@dataclass
class ClassificationOptions:
    dropout: float = 0.2
    label_smoothing: float = 0.0


class ClassificationHead(Head):
    kind = "classification"
    Options = ClassificationOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: ClassificationOptions) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.options = options
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(options.dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(features[-1]).flatten(1)))

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        if not batch.has_label.any():
            return {"ce": zero_loss(outputs)}
        logits, labels = outputs[batch.has_label], batch.label[batch.has_label]
        return {"ce": F.cross_entropy(logits, labels, label_smoothing=self.options.label_smoothing)}

    def decode(self, outputs: Tensor) -> Tensor:
        """Class probabilities [B, C]."""
        return outputs.softmax(dim=1)

    def metric(self) -> "ClassificationMetric":
        return ClassificationMetric(self.num_classes)


class ClassificationMetric:
    def __init__(self, num_classes: int) -> None:
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.seen = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        keep = batch.has_label.cpu()
        if keep.any():
            self.accuracy.update(predictions.detach().cpu()[keep], batch.label.cpu()[keep])
            self.seen += int(keep.sum())

    def compute(self) -> dict[str, float]:
        return {"accuracy": float(self.accuracy.compute())} if self.seen else {}
