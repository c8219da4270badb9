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


def stacked_boxes(record: RawRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object boxes then ignore regions, stacked: boxes [K,4] float32, labels [K] int64, is-ignore [K] bool."""
    def rows(boxes: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if boxes is None:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)

    objects, object_labels = rows(record.boxes, record.box_labels)
    regions, region_labels = rows(record.ignore_boxes, record.ignore_labels)
    ignored = np.concatenate([np.zeros(len(objects), bool), np.ones(len(regions), bool)])
    return np.concatenate([objects, regions]), np.concatenate([object_labels, region_labels]), ignored
