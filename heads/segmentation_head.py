"""What FCN, U-Net and SegNet share: per-pixel logits [B, C+1, H, W] (class 0 is background),
one configurable loss (segmentation_loss.py) and one metric (segmentation_metric.py)."""
from __future__ import annotations

from torch import Tensor

from datasets.sample import Batch
from heads.base import Head
from heads.segmentation_loss import SegmentationLoss, SegmentationLossOptions
from heads.segmentation_metric import SegmentationMetric


class SegmentationHead(Head):
    kind = "segmentation"

    def __init__(self, num_classes: int, options: SegmentationLossOptions) -> None:
        super().__init__()
        self.num_classes = num_classes + 1  # class 0 is background
        self.criterion = SegmentationLoss(self.num_classes, options)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        return self.criterion(outputs, batch)

    def decode(self, outputs: Tensor) -> Tensor:
        """Class index per pixel [B, H, W] (0 = background)."""
        return outputs.argmax(dim=1)

    def metric(self) -> SegmentationMetric:
        return SegmentationMetric(self.num_classes)
