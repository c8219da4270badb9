from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from datasets.coco import CocoDataset
from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX
from datasets.transforms import (
    AugmentOptions, SampleTransform, apply_transform, build_transform, compose_with_targets,
)

FLIP_ONLY = AugmentOptions(hflip_p=1.0, affine_p=0.0, color_p=0.0)


def _record_with_rectangle(height=48, width=48, x0=5, y0=10, x1=15, y1=20) -> RawRecord:
    """Dark noisy image with one bright rectangle; mask and box describe exactly that rectangle."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    image[y0:y1, x0:x1] = (230, 200, 210)
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return RawRecord(image=image, image_id=1, label=0, mask=mask,
                     boxes=np.array([[x0, y0, x1, y1]], np.float32), box_labels=np.array([0]))


def test_horizontal_flip_mirrors_image_mask_and_boxes_exactly():
    record = _record_with_rectangle()
    sample = apply_transform(build_transform(48, train=True, options=FLIP_ONLY), record)
    torch.testing.assert_close(sample.boxes, torch.tensor([[48.0 - 15, 10, 48.0 - 5, 20]]))
    assert torch.equal(sample.mask, torch.from_numpy(np.fliplr(record.mask).copy()).long())
    expected = torch.from_numpy(np.fliplr(record.image).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample.image, expected)
    assert sample.box_labels.tolist() == [0] and sample.label == 0


def test_random_augmentation_keeps_boxes_inside_and_mask_on_the_object():
    transform = build_transform(40, train=True, options=AugmentOptions(affine_p=1.0, color_p=1.0))
    record = _record_with_rectangle(x0=2, y0=30, x1=22, y1=46)  # near a border, so affine often cuts it
    for seed in range(12):
        transform.set_random_seed(seed)
        sample = apply_transform(transform, record)
        assert sample.image.shape == (3, 40, 40) and sample.mask.shape == (40, 40)
        assert ((sample.boxes >= 0) & (sample.boxes <= 40)).all()
        brightness = sample.image.mean(0)
        on_object = sample.mask == 1
        # Image and mask got the same geometry: the mask marks bright pixels, the rest is dark.
        assert (brightness[on_object] > 0.4).float().mean() > 0.95
        assert (brightness[~on_object] < 0.4).float().mean() > 0.95
        if len(sample.boxes):
            ys, xs = torch.nonzero(on_object, as_tuple=True)
            x0, y0, x1, y1 = sample.boxes[0].tolist()
            # The box still covers the visible object (rotation may only loosen it).
            assert x0 <= xs.min() + 1 and y0 <= ys.min() + 1 and x1 >= xs.max() and y1 >= ys.max()


def test_training_augmentation_on_shapes_keeps_targets_consistent(shapes_annotations):
    dataset = CocoDataset(shapes_annotations, transform=build_transform(48, train=True, options=AugmentOptions()))
    dataset.transform.set_random_seed(0)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert ((sample.boxes >= 0) & (sample.boxes <= 48)).all()
        assert (sample.boxes[:, 2:] > sample.boxes[:, :2]).all()
        assert set(sample.mask.unique().tolist()) <= {0, 1, 2, 3}
        assert len(sample.boxes) == len(sample.box_labels)
        background = sample.image[:, sample.mask == 0].mean(1)
        for value in sample.mask.unique().tolist():
            if value and (sample.mask == value).sum() > 20:
                inside = sample.image[:, sample.mask == value].mean(1)
                assert torch.linalg.norm(inside - background) > 0.05


def test_validation_transform_is_a_plain_resize():
    record = _record_with_rectangle(height=64, width=32, x0=4, y0=8, x1=12, y1=40)
    sample = apply_transform(build_transform(48, train=False), record)
    assert sample.image.shape == (3, 48, 48) and sample.orig_size == (64, 32)
    # Predictions map back to the original image by scaling with orig_size.
    torch.testing.assert_close(sample.boxes, torch.tensor([[4 * 1.5, 8 * 0.75, 12 * 1.5, 40 * 0.75]]))
    assert sample.mask[12, 12] == 1 and sample.mask[40, 40] == 0


def test_zero_boxes_and_missing_targets_pass_through():
    record = _record_with_rectangle()
    empty = RawRecord(image=record.image, image_id=3, mask=record.mask,
                      boxes=np.zeros((0, 4), np.float32), box_labels=np.zeros(0, np.int64))
    sample = apply_transform(build_transform(32, train=True), empty)
    assert sample.boxes.shape == (0, 4) and sample.boxes.dtype == torch.float32
    assert sample.box_labels.shape == (0,) and sample.box_labels.dtype == torch.int64

    bare = RawRecord(image=record.image, image_id=4)
    sample = apply_transform(build_transform(32, train=True), bare)
    assert sample.image.shape == (3, 32, 32)
    assert sample.mask is None and sample.boxes is None and sample.box_labels is None and sample.label is None


def _translated(dx: int, min_visibility: float = 0.3) -> SampleTransform:
    """A deterministic shift left by -dx px (albumentations' Affine with a fixed translation)."""
    steps = [A.Affine(translate_px={"x": dx, "y": 0}, border_mode=cv2.BORDER_CONSTANT, p=1.0)]
    return SampleTransform(compose_with_targets(steps), min_visibility)


def test_a_box_mostly_pushed_out_becomes_an_ignore_region_not_background():
    record = RawRecord(image=np.zeros((32, 32, 3), np.uint8), image_id=1,
                       boxes=np.array([[2, 10, 12, 20], [20, 4, 30, 14]], np.float32), box_labels=np.array([1, 0]))
    sample = _translated(-8)(record)   # 4 of the first box's 10 px stay visible: 40% >= 30%, kept
    assert sample.boxes.tolist() == [[0, 10, 4, 20], [12, 4, 22, 14]] and sample.ignore_boxes.shape == (0, 4)
    sample = _translated(-10)(record)  # 2 of 10 px: 20% < 30%, so its visible part is ignored, with its class
    assert sample.boxes.tolist() == [[10, 4, 20, 14]] and sample.box_labels.tolist() == [0]
    assert sample.ignore_boxes.tolist() == [[0, 10, 2, 20]] and sample.ignore_labels.tolist() == [1]
    sample = _translated(-14)(record)  # wholly outside: neither an object nor a region
    assert sample.boxes.tolist() == [[6, 4, 16, 14]] and sample.ignore_boxes.shape == (0, 4)


def test_crowd_regions_travel_with_the_image_as_ignore_regions():
    record = RawRecord(image=np.zeros((32, 32, 3), np.uint8), image_id=1,
                       boxes=np.zeros((0, 4), np.float32), box_labels=np.zeros(0, np.int64),
                       ignore_boxes=np.array([[4, 4, 12, 12]], np.float32), ignore_labels=np.array([2]))
    sample = apply_transform(build_transform(16, train=True, options=FLIP_ONLY), record)
    assert sample.ignore_boxes.tolist() == [[10, 2, 14, 6]] and sample.ignore_labels.tolist() == [2]
    assert sample.boxes.shape == (0, 4)


def test_letterbox_keeps_the_aspect_ratio_and_knows_how_to_map_back():
    image = np.full((40, 80, 3), 200, np.uint8)
    mask = np.ones((40, 80), np.uint8)
    record = RawRecord(image=image, image_id=1, mask=mask, boxes=np.array([[10, 5, 30, 25]], np.float32),
                       box_labels=np.array([0]))
    sample = apply_transform(build_transform(64, train=False, resize="letterbox"), record)
    assert sample.to_original == (0.8, 0.8, 0.0, 16.0)   # 80x40 -> 64x32, centred: 16 rows of padding above
    assert sample.boxes.tolist() == [[8, 20, 24, 36]]
    assert (sample.mask[:16] == IGNORE_INDEX).all() and (sample.mask[16:48] == 1).all()
    assert (sample.mask[48:] == IGNORE_INDEX).all() and float(sample.image[:, :16].max()) == 0.0
    stretched = apply_transform(build_transform(64, train=False), record)
    assert stretched.to_original == (0.8, 1.6, 0.0, 0.0)
