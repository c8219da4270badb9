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


def image_targets(box_labels: np.ndarray, boxes: np.ndarray, mask: np.ndarray | None,
                  num_classes: int) -> tuple[int | None, np.ndarray]:
    """The image-level targets of an image's objects: (label, multi-hot).

    The label is the class covering the largest visible area: mask pixels when there is a mask, else (or
    when every object is hidden, e.g. under crowd regions) the box areas; ties go to the lowest index; no
    objects, no label. The multi-hot marks each class with at least one object (all zero: none present,
    which is known, not missing)."""
    present = np.zeros(num_classes, np.float32)
    present[box_labels] = 1.0
    if len(box_labels) == 0:
        return None, present
    areas = np.zeros(num_classes)
    if mask is not None:
        areas = np.bincount(mask.ravel(), minlength=256)[1 : num_classes + 1].astype(float)
    if not areas.any():
        np.add.at(areas, box_labels, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return int(np.argmax(areas)), present
