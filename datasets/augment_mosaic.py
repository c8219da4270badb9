"""Mosaic (YOLOv4): a training image made of a grid of records of the same split, boxes, ignore regions and
masks following their images.

albumentations' `A.Mosaic` does the assembling; this module gives it records it can assemble exactly:

- every record is first scaled so that Mosaic's own fit to a cell is the identity (cover: the short side is
  the cell side; contain: the long side). A box's area before the mosaic is then its area in the mosaic
  before the cut, so the visible fraction of each box is known: one cut below `min_box_visibility` becomes
  an ignore region (datasets/transforms.py explains why), exactly as for boxes pushed out by an affine;
- a dataset of 8-bit and 16-bit files gives uint8 and float32 records: all become float32 in [0, 1];
- a record without a mask, in a split whose primary record has one, is IGNORE_INDEX everywhere (unknown).

The output is one cell (the training image size) cut from the grid; the steps after it (flips, affine,
colour, policies) and the resize work on it as on any image. Image-level labels (label, multi-label) are
not those of any one image any more: the mosaic's are missing, so classification heads skip it (and the
config refuses Mosaic for models with one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import albumentations as A
import cv2
import numpy as np

from datasets.augment_config import MosaicArgs
from datasets.record import RawRecord, stacked_boxes
from datasets.sample import IGNORE_INDEX

MIN_BOX_SIDE = 1e-3   # pixels: narrower is a zero-width box to the steps after the mosaic


@dataclass
class MosaicStage:
    args: MosaicArgs
    cell: int                                  # cell side = output side, pixels (the training image size)
    compose: A.Compose = field(init=False)

    def __post_init__(self) -> None:
        size = (self.cell, self.cell)
        mosaic = A.Mosaic(grid_yx=self.args.grid_yx, target_size=size, cell_shape=size,
                          center_range=self.args.center_range, fit_mode=self.args.fit_mode,
                          mask_interpolation=cv2.INTER_NEAREST_EXACT, fill=0, fill_mask=0, p=1.0)
        self.compose = A.Compose(
            [mosaic], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_labels", "box_ids"], clip=True))

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, primary: RawRecord, others: list[RawRecord], min_visibility: float) -> RawRecord:
        records = [fit_to_cell(record, self.cell, self.args.fit_mode) for record in same_dtype([primary, *others])]
        has_mask, has_boxes = primary.mask is not None, primary.boxes is not None
        stacked = [stacked_boxes(record) for record in records]
        first_ids = np.cumsum([0, *(len(boxes) for boxes, _, _ in stacked)])
        items = []
        for record, (boxes, labels, _), first_id in zip(records, stacked, first_ids):
            item = {"image": record.image, "bboxes": boxes, "box_labels": labels,
                    "box_ids": np.arange(first_id, first_id + len(boxes))}
            if has_mask:
                item["mask"] = record.mask if record.mask is not None else _unknown_mask(record.image)
            items.append(item)
        all_boxes = np.concatenate([boxes for boxes, _, _ in stacked])
        is_ignored = np.concatenate([ignored for _, _, ignored in stacked])
        out = self.compose(**items[0], mosaic_metadata=items[1:])
        kept = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        ids = np.asarray(out["box_ids"], np.int64).reshape(-1)
        out_labels = np.asarray(out["box_labels"], np.int64).reshape(-1)
        # A box cut to nothing on the crop's edge shows nothing, and the steps after this one refuse zero-width
        # boxes: it is dropped.
        seen = np.all(kept[:, 2:] - kept[:, :2] >= MIN_BOX_SIDE, axis=1)
        kept, ids, out_labels = kept[seen], ids[seen], out_labels[seen]
        visible = _area(kept) / np.maximum(_area(all_boxes[ids]), 1e-6)
        to_ignore = is_ignored[ids] | (visible < min_visibility)
        return RawRecord(
            image=out["image"], image_id=primary.image_id, mask=out["mask"] if has_mask else None,
            boxes=kept[~to_ignore] if has_boxes else None, box_labels=out_labels[~to_ignore] if has_boxes else None,
            ignore_boxes=kept[to_ignore] if has_boxes else None,
            ignore_labels=out_labels[to_ignore] if has_boxes else None,
        )


def same_dtype(records: list[RawRecord]) -> list[RawRecord]:
    """All uint8, or (any float among them) all float32 in [0, 1]."""
    if all(record.image.dtype == np.uint8 for record in records):
        return records
    return [dataclasses.replace(record, image=record.image.astype(np.float32) / 255.0)
            if record.image.dtype == np.uint8 else record for record in records]


def fit_to_cell(record: RawRecord, cell: int, fit_mode: str) -> RawRecord:
    """Scaled so that A.Mosaic's own resize (cover: short side to the cell; contain: long side) does nothing."""
    height, width = record.image.shape[:2]
    side = min(height, width) if fit_mode == "cover" else max(height, width)
    scale = cell / side
    new_h = cell if side == height else max(1, round(height * scale))
    new_w = cell if side == width else max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return record
    image = cv2.resize(record.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:   # OpenCV drops a single channel axis
        image = image[..., None]
    mask = (cv2.resize(record.mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
            if record.mask is not None else None)
    factors = np.array([new_w / width, new_h / height] * 2, np.float32)
    scaled = (lambda boxes: None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4) * factors)
    return dataclasses.replace(record, image=image, mask=mask, boxes=scaled(record.boxes),
                               ignore_boxes=scaled(record.ignore_boxes))


def _unknown_mask(image: np.ndarray) -> np.ndarray:
    return np.full(image.shape[:2], IGNORE_INDEX, np.uint8)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
