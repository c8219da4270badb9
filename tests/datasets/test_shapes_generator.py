from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datasets.shapes import generate_shapes, generate_shapes_splits


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_shapes(tmp_path / name, num_images=3, image_size=32, seed=seed)
    a, b, c = (_file_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a["annotations.json"] != c["annotations.json"]
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))


def test_annotations_describe_exactly_the_visible_pixels(shapes_annotations):
    coco = json.loads(shapes_annotations.read_text())
    assert {c["name"] for c in coco["categories"]} == {"circle", "square", "triangle"}
    by_image = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    overlapping_boxes = 0
    for img in coco["images"]:
        image = cv2.cvtColor(cv2.imread(str(shapes_annotations.parent / img["file_name"])), cv2.COLOR_BGR2RGB)
        assert image.shape == (img["height"], img["width"], 3)
        masks = [mask_utils.decode(ann["segmentation"]).astype(bool) for ann in by_image[img["id"]]]
        assert masks, "every image keeps at least one visible shape"
        # Occlusion is resolved: no pixel belongs to two instances.
        assert (np.sum(masks, axis=0) <= 1).all()
        for ann, mask in zip(by_image[img["id"]], masks):
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum() >= 20
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            # One flat colour plus noise (std ~10): a mask that kept an occluded part would mix two
            # colours that differ by far more than that.
            pixels = image[mask].astype(int)
            assert np.abs(pixels - np.median(pixels, axis=0)).max() <= 51
        overlapping_boxes += sum(_boxes_overlap(a["bbox"], b["bbox"]) for a, b in itertools.combinations(by_image[img["id"]], 2))
    assert overlapping_boxes > 0, "the fixture should contain overlapping shapes for this test to mean something"


def _boxes_overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_shapes_contrast_with_the_background(shapes_annotations):
    coco = json.loads(shapes_annotations.read_text())
    for img in coco["images"]:
        image = cv2.imread(str(shapes_annotations.parent / img["file_name"])).astype(float)
        for ann in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
            if ring.sum() < 10:
                continue
            # Occluders also contrast, so the inner ring differs whatever surrounds the shape.
            assert np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)) > 30


def test_splits_are_generated_once_with_different_content(tmp_path):
    generate_shapes_splits(tmp_path, train=3, val=2, image_size=32, seed=0)
    train = json.loads((tmp_path / "train" / "annotations.json").read_text())
    val = json.loads((tmp_path / "val" / "annotations.json").read_text())
    assert (len(train["images"]), len(val["images"])) == (3, 2)
    assert (tmp_path / "train/images/000000.png").read_bytes() != (tmp_path / "val/images/000000.png").read_bytes()

    stamp = (tmp_path / "train" / "annotations.json").stat().st_mtime_ns
    generate_shapes_splits(tmp_path, train=3, val=2, image_size=32, seed=0)
    assert (tmp_path / "train" / "annotations.json").stat().st_mtime_ns == stamp

    with pytest.raises(ValueError, match="delete"):
        generate_shapes_splits(tmp_path, train=3, val=2, image_size=48, seed=0)
