"""Albumentations pipelines that move the image, semantic mask and boxes together.

A `SampleTransform` takes a `RawRecord` (HxWxC uint8 or float image, uint8 mask, xyxy boxes and ignore
regions) and gives a `Sample` (float [0,1] CHW image, int64 mask, float32 boxes).

Boxes that augmentation pushes mostly out of the image (visible fraction < `min_box_visibility`) are not
dropped: they become ignore regions, so the detector is not taught that a half-visible object is
background. Albumentations filters by visibility itself, but cannot say which boxes it dropped; so every
box's corners also travel as keypoints, which are never clipped, and give its unclipped size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX, Sample

Resize = Literal["stretch", "letterbox"]
IMAGE_CORNER = -1  # the corner_of value of the two image-corner keypoints that measure the resize


@dataclass
class AugmentOptions:
    hflip_p: float = 0.5
    affine_p: float = 0.5
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1                # fraction of the image side, each direction
    rotate: float = 10.0                  # degrees, each direction
    color_p: float = 0.5
    color_jitter: float = 0.2             # brightness, contrast and saturation strength
    hue: float = 0.05                     # kept small: hue shifts quickly change what a colour is
    min_box_visibility: float = 0.3       # a box mostly pushed out of the image becomes an ignore region


@dataclass
class SampleTransform:
    """An albumentations Compose plus what turning its output into a Sample needs."""
    compose: A.Compose
    min_box_visibility: float = 0.0

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, record: RawRecord) -> Sample:
        return apply_transform(self, record)


def build_transform(image_size: int, train: bool, options: AugmentOptions | None = None,
                    resize: Resize = "stretch", channels: int = 3) -> SampleTransform:
    """Training: affine + flip + colour jitter, then resize. Validation: the resize only, so predictions map
    back to the image on disk exactly (`Sample.to_original`).

    `stretch` resizes to a square; `letterbox` keeps the aspect ratio and pads the short side (padding is
    black in the image and IGNORE_INDEX in the mask: it is no part of the scene)."""
    options = options or AugmentOptions()
    steps = _augmentations(options, channels) if train else []
    # INTER_NEAREST_EXACT samples pixel centres like the linear image resize; INTER_NEAREST shifts masks.
    if resize == "letterbox":
        steps += [A.LongestMaxSize(max_size=image_size, mask_interpolation=cv2.INTER_NEAREST_EXACT),
                  A.PadIfNeeded(image_size, image_size, position="center", border_mode=cv2.BORDER_CONSTANT,
                                fill=0, fill_mask=IGNORE_INDEX)]
    elif resize == "stretch":
        steps.append(A.Resize(image_size, image_size, mask_interpolation=cv2.INTER_NEAREST_EXACT))
    else:
        raise ValueError(f"data.resize: expected 'stretch' or 'letterbox', got {resize!r}")
    return SampleTransform(compose_with_targets(steps), options.min_box_visibility)


def to_tensor_transform() -> SampleTransform:
    """No geometry change: only the conversion to the Sample's tensor formats (boxes pass through)."""
    # A spatial step that never fires, so albumentations has a transform for its box and keypoint processors.
    return SampleTransform(compose_with_targets([A.HorizontalFlip(p=0.0)]))


def apply_transform(transform: SampleTransform, record: RawRecord) -> Sample:
    """Run the transform on a record; targets the record lacks stay None in the Sample."""
    has_boxes = record.boxes is not None
    boxes, labels, ignored = _all_boxes(record)
    height, width = record.image.shape[:2]
    inputs = {
        "image": record.image,
        "bboxes": boxes, "box_labels": labels, "box_ids": np.arange(len(boxes)),
        # Each box's four corners, then the image's top-left and bottom-right corners.
        "keypoints": np.concatenate([_corners(boxes), [[0, 0], [width, height]]]).astype(np.float32),
        "corner_of": np.concatenate([np.repeat(np.arange(len(boxes)), 4), [IMAGE_CORNER, IMAGE_CORNER]]),
    }
    if record.mask is not None:
        inputs["mask"] = record.mask
    out = transform.compose(**inputs)
    kept = _kept_boxes(out, ignored, transform.min_box_visibility)
    return Sample(
        image=out["image"],
        image_id=record.image_id,
        orig_size=record.orig_size,
        label=record.label,
        mask=torch.as_tensor(out["mask"]).long() if record.mask is not None else None,
        boxes=torch.as_tensor(kept.boxes) if has_boxes else None,
        box_labels=torch.as_tensor(kept.labels) if has_boxes else None,
        ignore_boxes=torch.as_tensor(kept.ignore_boxes) if has_boxes else None,
        ignore_labels=torch.as_tensor(kept.ignore_labels) if has_boxes else None,
        # Image-level, so geometry cannot change it (a crop could hide an object; we keep the annotation's word).
        multi_label=torch.as_tensor(record.multi_label, dtype=torch.float32) if record.multi_label is not None else None,
        to_original=_to_original(out, width, height),
    )


@dataclass
class _KeptBoxes:
    boxes: np.ndarray          # [N,4] float32
    labels: np.ndarray         # [N] int64
    ignore_boxes: np.ndarray   # [M,4] float32
    ignore_labels: np.ndarray  # [M] int64


def _all_boxes(record: RawRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object boxes then ignore regions, stacked: boxes [K,4], labels [K], is-ignore [K]."""
    def rows(boxes: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if boxes is None:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)

    objects, object_labels = rows(record.boxes, record.box_labels)
    regions, region_labels = rows(record.ignore_boxes, record.ignore_labels)
    ignored = np.concatenate([np.zeros(len(objects), bool), np.ones(len(regions), bool)])
    return np.concatenate([objects, regions]), np.concatenate([object_labels, region_labels]), ignored


def _corners(boxes: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1), np.stack([x2, y2], 1)],
                    axis=1).reshape(-1, 2)


def _kept_boxes(out: dict, ignored: np.ndarray, min_visibility: float) -> _KeptBoxes:
    boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
    labels = np.asarray(out["box_labels"], np.int64).reshape(-1)
    ids = np.asarray(out["box_ids"], np.int64).reshape(-1)
    visible = _visible_fraction(boxes, ids, np.asarray(out["keypoints"], np.float32).reshape(-1, 2)[:, :2],
                                np.asarray(out["corner_of"]).reshape(-1))
    to_ignore = ignored[ids] | (visible < min_visibility)
    return _KeptBoxes(boxes[~to_ignore], labels[~to_ignore], boxes[to_ignore], labels[to_ignore])


def _visible_fraction(boxes: np.ndarray, ids: np.ndarray, points: np.ndarray, corner_of: np.ndarray) -> np.ndarray:
    """Clipped area / unclipped area of each kept box (the unclipped box spans its four corner keypoints)."""
    fractions = np.ones(len(boxes), np.float32)
    for row, box_id in enumerate(ids):
        corners = points[corner_of == box_id]
        whole = np.prod(corners.max(axis=0) - corners.min(axis=0))
        clipped = np.prod(boxes[row, 2:] - boxes[row, :2])
        if whole > 0:
            fractions[row] = min(1.0, clipped / whole)
    return fractions


def _to_original(out: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """From where the image's corners went: input px -> disk px is x = (x' - offset) / scale."""
    points = np.asarray(out["keypoints"], np.float64).reshape(-1, 2)[:, :2]
    top_left, bottom_right = points[np.asarray(out["corner_of"]).reshape(-1) == IMAGE_CORNER]
    scale = (bottom_right - top_left) / np.array([width, height], np.float64)
    return float(scale[0]), float(scale[1]), float(top_left[0]), float(top_left[1])


def _augmentations(options: AugmentOptions, channels: int) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if options.affine_p > 0:
        steps.append(A.Affine(
            scale=options.scale,
            keep_ratio=True,  # an independent x/y scale would turn circles into ellipses
            translate_percent=(-options.translate, options.translate),
            rotate=(-options.rotate, options.rotate),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            # The border is constant fill with no object in it, so it is truly background, not unknown.
            fill_mask=0,
            p=options.affine_p,
        ))
    if options.hflip_p > 0:
        steps.append(A.HorizontalFlip(p=options.hflip_p))
    if options.color_p > 0:
        steps.append(_colour_jitter(options, channels))
    return steps


def _colour_jitter(options: AugmentOptions, channels: int) -> A.BasicTransform:
    strength = options.color_jitter
    if channels == 3:
        return A.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=options.hue,
                             p=options.color_p)
    # Saturation and hue are colour notions; grey and multispectral images get brightness and contrast only.
    return A.RandomBrightnessContrast(brightness_limit=strength, contrast_limit=strength, p=options.color_p)


def compose_with_targets(steps: list[A.BasicTransform]) -> A.Compose:
    return A.Compose(
        # ToFloat without max_value divides by the dtype's maximum: 255 for uint8, 1 for float32 in [0, 1].
        [*steps, A.ToFloat(), ToTensorV2()],
        # Nothing is filtered by visibility here (see the module docstring); clip keeps boxes inside the image.
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_labels", "box_ids"], clip=True),
        keypoint_params=A.KeypointParams(format="xy", label_fields=["corner_of"], remove_invisible=False),
    )
