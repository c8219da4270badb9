"""The raw record a format reader yields, before any transform.

Readers only decode and validate; `transforms.apply_transform` turns a record
into a `Sample`. Keeping this boundary explicit lets a new format reuse the
transform code unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawRecord:
    image: np.ndarray                      # HxWxC: uint8, or float32 in [0, 1] (datasets.image_io.read_image)
    image_id: int
    label: int | None = None               # image-level class index 0..C-1
    mask: np.ndarray | None = None         # HxW uint8: 0 background, 1..C classes, IGNORE_INDEX unknown
    boxes: np.ndarray | None = None        # [N,4] float32 xyxy pixels
    box_labels: np.ndarray | None = None   # [N] int64 class index 0..C-1
    multi_label: np.ndarray | None = None  # [C] float32 multi-hot of the classes present
    # Regions where a detection is neither rewarded nor penalised (COCO crowds, VOC "difficult"), with their
    # classes: [M,4] float32 xyxy pixels and [M] int64. Only meaningful where boxes are known.
    ignore_boxes: np.ndarray | None = None
    ignore_labels: np.ndarray | None = None

    @property
    def orig_size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
