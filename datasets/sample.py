"""The data contract between datasets, heads and the trainer.

A `Sample` is one transformed image with whatever targets its source has;
a `Batch` is what the collate function stacks from samples. A target a
source does not provide is marked missing explicitly (`None` in a Sample,
`has_*` False in a Batch); it is never an empty tensor that could be read
as "no objects".
"""
from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = 255  # semantic-mask pixels that no loss or metric may count


@dataclass
class Sample:
    image: Tensor                      # [C,H,W] float32 in [0,1] (normalisation is the backbone's job)
    image_id: int                      # id of the image in its source (COCO image id)
    orig_size: tuple[int, int]         # (height, width) of the image on disk
    label: int | None = None           # image-level class index 0..C-1
    mask: Tensor | None = None         # [H,W] int64: 0 background, 1..C classes, IGNORE_INDEX unknown
    boxes: Tensor | None = None        # [N,4] float32 xyxy in input pixels
    box_labels: Tensor | None = None   # [N] int64 class index 0..C-1
    multi_label: Tensor | None = None  # [C] float32 multi-hot: 1 for each class present; all-zero = none present
    # Ignore regions (crowds, "difficult" objects, objects mostly cut off by augmentation): [M,4] xyxy input px
    # and [M] class indices. None wherever boxes are None.
    ignore_boxes: Tensor | None = None
    ignore_labels: Tensor | None = None
    # Input pixels -> pixels of the image on disk: x_disk = (x - offset_x) / scale_x (likewise y), as
    # (scale_x, scale_y, offset_x, offset_y). Exact for the validation transform (resize or letterbox).
    to_original: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0)
    # MixUp / CutMix (datasets/augment_mix.py): [C] float32 class shares summing to 1; `label` stays the
    # sample's own class. None: not mixed.
    soft_label: Tensor | None = None


@dataclass
class Batch:
    image: Tensor                      # [B,C,H,W] float32 in [0,1]
    image_id: Tensor                   # [B] int64
    orig_size: Tensor                  # [B,2] int64 (height, width)
    label: Tensor                      # [B] int64, 0 where missing (see has_label)
    has_label: Tensor                  # [B] bool
    mask: Tensor                       # [B,H,W] int64, IGNORE_INDEX where missing
    has_mask: Tensor                   # [B] bool
    boxes: list[Tensor] = field(default_factory=list)       # B x [N,4] xyxy; [0,4] where missing
    box_labels: list[Tensor] = field(default_factory=list)  # B x [N]
    has_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    multi_label: Tensor | None = None  # [B,C] float32 multi-hot, zeros where missing (see has_multi_label)
    has_multi_label: Tensor | None = None  # [B] bool
    ignore_boxes: list[Tensor] | None = None   # B x [M,4] xyxy ignore regions; [0,4] where none
    ignore_labels: list[Tensor] | None = None  # B x [M]
    to_original: Tensor | None = None          # [B,4] (scale_x, scale_y, offset_x, offset_y), see Sample
    # [B,C] class shares: a mixed sample's soft label, the others' one-hot label (zero rows where unlabelled);
    # [B,0] when no sample of the batch is mixed.
    soft_label: Tensor | None = None

    def __post_init__(self) -> None:
        # Batches built without these (most tests, older code) get the neutral value: multi-labels missing,
        # no ignore regions, a plain resize from orig_size.
        device = self.image.device
        if self.has_multi_label is None:
            self.has_multi_label = torch.zeros(len(self), dtype=torch.bool, device=device)
        if self.multi_label is None:
            self.multi_label = torch.zeros(len(self), 0, device=device)
        if self.ignore_boxes is None:
            self.ignore_boxes = [torch.zeros(0, 4, device=device) for _ in range(len(self))]
        if self.ignore_labels is None:
            self.ignore_labels = [torch.zeros(0, dtype=torch.int64, device=device) for _ in range(len(self))]
        if self.to_original is None:
            height, width = self.image.shape[-2:]
            scale = torch.tensor([width, height], dtype=torch.float32, device=device) / self.orig_size.flip(1).float()
            self.to_original = torch.cat([scale, torch.zeros_like(scale)], dim=1)
        if self.soft_label is None:
            self.soft_label = torch.zeros(len(self), 0, device=device)

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """Page-locked copies, so `to(cuda)` copies while the GPU computes (DataLoader(pin_memory=True) calls it)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, move: Callable[[Tensor], Tensor]) -> "Batch":
        return Batch(
            image=move(self.image), image_id=move(self.image_id), orig_size=move(self.orig_size),
            label=move(self.label), has_label=move(self.has_label),
            mask=move(self.mask), has_mask=move(self.has_mask),
            boxes=[move(b) for b in self.boxes], box_labels=[move(b) for b in self.box_labels],
            has_boxes=move(self.has_boxes),
            multi_label=move(self.multi_label), has_multi_label=move(self.has_multi_label),
            ignore_boxes=[move(b) for b in self.ignore_boxes], ignore_labels=[move(b) for b in self.ignore_labels],
            to_original=move(self.to_original), soft_label=move(self.soft_label),
        )
