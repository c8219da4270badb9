"""U-Net decoder (Ronneberger et al. 2015) over the backbone's feature pyramid.

From the deepest map up, each step doubles the resolution and concatenates
the backbone map of that stride (the skip connection). The last step
concatenates the input image itself, the full-resolution skip a backbone
cannot provide, so edges are recovered at pixel level.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from datasets.sample import IGNORE_INDEX, Batch
from heads.base import Head, zero_loss
from heads.blocks import conv_bn_relu, upsample_to


@dataclass
class UNetOptions:
    # Output channels of each decoder step, deepest first; one per backbone stage (the last step is full resolution).
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    dice_weight: float = 0.5  # loss = cross-entropy + dice_weight * Dice


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([upsample_to(x, skip), skip], dim=1))


class UNetHead(Head):
    kind = "segmentation"
    Options = UNetOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: UNetOptions) -> None:
        super().__init__()
        if len(options.decoder_channels) != len(channels):
            raise ValueError(f"unet.decoder_channels: expected {len(channels)} entries (one per backbone stage, "
                             f"strides {strides}), got {len(options.decoder_channels)}")
        self.num_classes = num_classes + 1  # class 0 is background
        self.options = options
        skips = list(reversed(channels[:-1])) + [3]  # shallower backbone maps, then the image
        ins = [channels[-1]] + options.decoder_channels[:-1]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, options.decoder_channels))
        self.classifier = nn.Conv2d(options.decoder_channels[-1], self.num_classes, 1)
        self.dice = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, list(reversed(features[:-1])) + [image]):
            x = block(x, skip)
        return self.classifier(x)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        if not batch.has_mask.any():
            return {"ce": zero_loss(outputs), "dice": zero_loss(outputs)}
        logits, mask = outputs[batch.has_mask], batch.mask[batch.has_mask]
        return {"ce": F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX),
                "dice": self.options.dice_weight * self.dice(logits, mask)}

    def decode(self, outputs: Tensor) -> Tensor:
        """Class index per pixel [B, H, W] (0 = background)."""
        return outputs.argmax(dim=1)

    def metric(self) -> "SegmentationMetric":
        return SegmentationMetric(self.num_classes)


class SegmentationMetric:
    def __init__(self, num_classes: int) -> None:
        self.iou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)
        self.pixel_accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.seen = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        keep = batch.has_mask.cpu()
        if keep.any():
            preds, target = predictions.detach().cpu()[keep], batch.mask.cpu()[keep]
            self.iou.update(preds, target)
            self.pixel_accuracy.update(preds, target)
            self.seen += int(keep.sum())

    def compute(self) -> dict[str, float]:
        if not self.seen:
            return {}
        return {"mIoU": float(self.iou.compute()), "pixel_accuracy": float(self.pixel_accuracy.compute())}
