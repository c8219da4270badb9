"""Albumentations pipelines that move the image, semantic mask and boxes together.

A `SampleTransform` takes a `RawRecord` (HxWxC uint8 or float image, uint8 mask, xyxy boxes and ignore
regions) and gives a `Sample` (float [0,1] CHW image, int64 mask, float32 boxes).

Boxes that augmentation pushes mostly out of the image (visible fraction < `min_box_visibility`) are not
dropped: they become ignore regions, so the detector is not taught that a half-visible object is
background. Albumentations filters by visibility itself, but cannot say which boxes it dropped; so every
box's corners also travel as keypoints, which are never clipped, and give its unclipped size.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from datasets.augment_config import AugmentOptions, MixArgs, MosaicArgs, build_plan
from datasets.augment_mix import mix_samples
from datasets.augment_mosaic import MosaicStage
from datasets.record import RawRecord, stacked_boxes
from datasets.sample import IGNORE_INDEX, Sample

__all__ = ["AugmentOptions", "SampleTransform", "apply_transform", "build_transform", "compose_with_targets",
           "to_tensor_transform"]

Resize = Literal["stretch", "letterbox"]
IMAGE_CORNER = -1  # the corner_of value of the two image-corner keypoints that measure the resize


@dataclass
class Partners:
    """The other records a sample's augmentation takes this time: a mosaic's other cells, a mix's partner."""
    step: MosaicArgs | MixArgs | None = None
    positions: list[int] = field(default_factory=list)


@dataclass
class SampleTransform:
    """An albumentations Compose plus what turning its output into a Sample needs, and the steps that take
    other records of the split (Mosaic before the Compose, MixUp / CutMix after it)."""
    compose: A.Compose
    min_box_visibility: float = 0.0
    mosaic: MosaicStage | None = None
    mixes: list[MixArgs] = field(default_factory=list)
    # Draws the partners: seeded with the Compose, so a sample's partners follow (seed, epoch, index) too.
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)
        if self.mosaic is not None:
            self.mosaic.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def draw_partners(self, size: int) -> Partners:
        """Whether a mosaic or a mix fires for the next sample of a split of `size` records, and with which
        records (drawn uniformly, possibly the sample itself): decided before reading, so only what is used is
        read."""
        if self.mosaic is not None and self.rng.random() < self.mosaic.args.p:
            return Partners(self.mosaic.args, self.rng.integers(size, size=self.mosaic.args.partners).tolist())
        if self.mixes:
            mix = self.mixes[int(self.rng.integers(len(self.mixes)))]   # MixUp and CutMix: one of them, 50/50
            if self.rng.random() < mix.p:
                return Partners(mix, [int(self.rng.integers(size))])
        return Partners()

    def __call__(self, record: RawRecord, partners: Partners | None = None, others: Sequence[RawRecord] = (),
                 num_classes: int = 0) -> Sample:
        """The record's Sample; with `partners` drawn by `draw_partners` and their records `others`, mosaicked
        or mixed with them (a mix needs `num_classes` for its soft label)."""
        partners = partners or Partners()
        if isinstance(partners.step, MosaicArgs) and self.mosaic is not None:
            record = self.mosaic(record, list(others), self.min_box_visibility)
        sample = apply_transform(self, record)
        if isinstance(partners.step, MixArgs):
            partner = apply_transform(self, others[0])
            sample = mix_samples(sample, partner, partners.step, num_classes, int(self.rng.integers(2**31)))
        return sample


def build_transform(image_size: int, train: bool, options: AugmentOptions | None = None,
                    resize: Resize = "stretch", channels: int = 3) -> SampleTransform:
    """Training: the preset's affine + flip + colour jitter, its extra steps and the listed ones (a Mosaic
    first, MixUp / CutMix last; datasets/augment_config.py), then resize. Validation: the resize only, so
    predictions map back to the image on disk exactly (`Sample.to_original`).

    `stretch` resizes to a square; `letterbox` keeps the aspect ratio and pads the short side (padding is
    black in the image and IGNORE_INDEX in the mask: it is no part of the scene)."""
    options = options or AugmentOptions()
    plan = build_plan(options, channels) if train else None
    steps = [*_augmentations(options, channels), *plan.steps] if plan is not None else []
    # INTER_NEAREST_EXACT samples pixel centres like the linear image resize; INTER_NEAREST shifts masks.
    if resize == "letterbox":
        steps += [A.LongestMaxSize(max_size=image_size, mask_interpolation=cv2.INTER_NEAREST_EXACT),
                  A.PadIfNeeded(image_size, image_size, position="center", border_mode=cv2.BORDER_CONSTANT,
                                fill=0, fill_mask=IGNORE_INDEX)]
    elif resize == "stretch":
        steps.append(A.Resize(image_size, image_size, mask_interpolation=cv2.INTER_NEAREST_EXACT))
    else:
        raise ValueError(f"data.resize: expected 'stretch' or 'letterbox', got {resize!r}")
    mosaic = MosaicStage(plan.mosaic, image_size) if plan is not None and plan.mosaic is not None else None
    return SampleTransform(compose_with_targets(steps), options.min_box_visibility, mosaic=mosaic,
                           mixes=plan.mixes if plan is not None else [])


def to_tensor_transform() -> SampleTransform:
    """No geometry change: only the conversion to the Sample's tensor formats (boxes pass through)."""
    # A spatial step that never fires, so albumentations has a transform for its box and keypoint processors.
    return SampleTransform(compose_with_targets([A.HorizontalFlip(p=0.0)]))


def apply_transform(transform: SampleTransform, record: RawRecord) -> Sample:
    """Run the transform on a record; targets the record lacks stay None in the Sample."""
    has_boxes = record.boxes is not None
    boxes, labels, ignored = stacked_boxes(record)
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
        if len(corners) < 2:   # a listed transform dropped the corners: the visibility is unknown, keep the box
            continue
        whole = np.prod(corners.max(axis=0) - corners.min(axis=0))
        clipped = np.prod(boxes[row, 2:] - boxes[row, :2])
        if whole > 0:
            fractions[row] = min(1.0, clipped / whole)
    return fractions


def _to_original(out: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """From where the image's corners went: input px -> disk px is x = (x' - offset) / scale."""
    points = np.asarray(out["keypoints"], np.float64).reshape(-1, 2)[:, :2]
    corners = points[np.asarray(out["corner_of"]).reshape(-1) == IMAGE_CORNER]
    if len(corners) != 2:   # a listed (training) transform dropped them: no exact map back exists anyway
        height_out, width_out = out["image"].shape[-2:]
        return width_out / width, height_out / height, 0.0, 0.0
    top_left, bottom_right = corners
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
