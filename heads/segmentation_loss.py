"""The loss shared by the segmentation heads: a weighted sum of cross-entropy, Dice, Focal and Lovasz.

Only images whose mask is present count, and pixels labelled IGNORE_INDEX count nowhere. The Dice, Focal
and Lovasz terms are segmentation-models-pytorch's multiclass losses. Each segmentation head's Options
subclasses SegmentationLossOptions, so the weights are flat keys of the head's config (`dice_weight: 0.5`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import Tensor, nn

from datasets.sample import IGNORE_INDEX, Batch
from heads.base import zero_loss


@dataclass
class SegmentationLossOptions:
    ce_weight: float = 1.0
    dice_weight: float = 0.5
    focal_weight: float = 0.0
    lovasz_weight: float = 0.0
    # Cross-entropy weight per class, background first (num_classes + 1 entries); None: all 1.
    class_weights: list[float] | None = None


class SegmentationLoss(nn.Module):
    """`forward(logits [B,K,H,W], batch)` -> {"ce", "dice", "focal", "lovasz"}: the terms with non-zero weight."""

    def __init__(self, num_classes: int, options: SegmentationLossOptions) -> None:
        super().__init__()
        if options.class_weights is not None and len(options.class_weights) != num_classes:
            raise ValueError(f"class_weights: expected {num_classes} entries (background first), "
                             f"got {len(options.class_weights)}")
        self.weights = {name: w for name, w in [("ce", options.ce_weight), ("dice", options.dice_weight),
                                                ("focal", options.focal_weight), ("lovasz", options.lovasz_weight)]
                        if w != 0.0}
        if not self.weights:
            raise ValueError("ce_weight, dice_weight, focal_weight, lovasz_weight: every term has weight 0")
        class_weights = None if options.class_weights is None else torch.tensor(options.class_weights)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.terms = nn.ModuleDict({
            "dice": DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX),
            "focal": FocalLoss(mode="multiclass", ignore_index=IGNORE_INDEX),
            "lovasz": LovaszLoss(mode="multiclass", ignore_index=IGNORE_INDEX),
        })

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        logits, mask = logits[batch.has_mask], batch.mask[batch.has_mask]
        if not (mask != IGNORE_INDEX).any():  # no labelled pixel: the mean terms would be 0/0
            return {name: zero_loss(logits) for name in self.weights}
        return {name: weight * self.term(name, logits, mask) for name, weight in self.weights.items()}

    def term(self, name: str, logits: Tensor, mask: Tensor) -> Tensor:
        if name == "ce":
            return F.cross_entropy(logits, mask, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        return self.terms[name](logits, mask)
