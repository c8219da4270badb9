"""Albumentations pipelines that move the image, semantic mask and boxes together.

A transform takes a `RawRecord` (HxWx3 uint8 image, uint8 mask, xyxy boxes) and
gives a `Sample` (float [0,1] CHW image, int64 mask, float32 boxes).
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from datasets.record import RawRecord
from datasets.sample import Sample


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
    min_box_visibility: float = 0.3       # a box mostly pushed out of the image is dropped


def build_transform(image_size: int, train: bool, options: AugmentOptions | None = None) -> A.Compose:
    """Training: affine + flip + colour jitter, then resize. Validation: a plain resize only,
    so predictions map back to the original image by scaling with orig_size."""
    options = options or AugmentOptions()
    steps = _augmentations(options) if train else []
    # INTER_NEAREST_EXACT samples pixel centres like the linear image resize; INTER_NEAREST shifts masks.
    steps.append(A.Resize(image_size, image_size, mask_interpolation=cv2.INTER_NEAREST_EXACT))
    return _compose(steps, options.min_box_visibility)


def to_tensor_transform() -> A.Compose:
    """No geometry change: only the conversion to the Sample's tensor formats (boxes pass through)."""
    return A.Compose([A.ToFloat(max_value=255.0), ToTensorV2()])


def apply_transform(transform: A.Compose, record: RawRecord) -> Sample:
    """Run `transform` on a record; targets the record lacks stay None in the Sample."""
    inputs = {
        "image": record.image,
        # Albumentations needs the bbox fields even when a source has no boxes.
        "bboxes": record.boxes if record.boxes is not None else np.zeros((0, 4), np.float32),
        "box_labels": record.box_labels if record.box_labels is not None else np.zeros(0, np.int64),
    }
    if record.mask is not None:
        inputs["mask"] = record.mask
    out = transform(**inputs)
    has_boxes = record.boxes is not None
    return Sample(
        image=out["image"],
        image_id=record.image_id,
        orig_size=record.orig_size,
        label=record.label,
        mask=torch.as_tensor(out["mask"]).long() if record.mask is not None else None,
        boxes=torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)) if has_boxes else None,
        box_labels=torch.as_tensor(np.asarray(out["box_labels"], np.int64).reshape(-1)) if has_boxes else None,
        # Image-level, so geometry cannot change it (a crop could hide an object; we keep the annotation's word).
        multi_label=torch.as_tensor(record.multi_label, dtype=torch.float32) if record.multi_label is not None else None,
    )


def _augmentations(options: AugmentOptions) -> list[A.BasicTransform]:
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
        strength = options.color_jitter
        steps.append(A.ColorJitter(
            brightness=strength, contrast=strength, saturation=strength, hue=options.hue, p=options.color_p
        ))
    return steps


def _compose(steps: list[A.BasicTransform], min_box_visibility: float) -> A.Compose:
    return A.Compose(
        [*steps, A.ToFloat(max_value=255.0), ToTensorV2()],
        # clip keeps every box inside the image after each geometric step.
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["box_labels"], min_visibility=min_box_visibility, clip=True
        ),
    )
