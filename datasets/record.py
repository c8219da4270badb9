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
    image: np.ndarray                      # HxWx3 uint8 RGB
    image_id: int
    label: int | None = None               # image-level class index 0..C-1
    mask: np.ndarray | None = None         # HxW uint8: 0 background, 1..C classes, IGNORE_INDEX unknown
    boxes: np.ndarray | None = None        # [N,4] float32 xyxy pixels
    box_labels: np.ndarray | None = None   # [N] int64 class index 0..C-1
    multi_label: np.ndarray | None = None  # [C] float32 multi-hot of the classes present

    @property
    def orig_size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
