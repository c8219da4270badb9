"""Builders of tiny COCO datasets on disk, for the tests of readers and of bad data (tests/datasets/,
tests/faults/): images, COCO files, boxes and RLE masks."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_image(path: Path, height: int, width: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
               create_files: bool = True) -> Path:
    """annotations.json in root; each images[] entry's file is created as a grey PNG unless create_files is False."""
    root.mkdir(parents=True, exist_ok=True)
    if create_files:
        for image in images:
            write_image(root / image["file_name"], image["height"], image["width"])
    categories = categories if categories is not None else [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def image_entry(image_id: int, height: int = 32, width: int = 32) -> dict:
    return {"id": image_id, "file_name": f"img/{image_id}.png", "height": height, "width": width}


def box_annotation(ann_id: int, image_id: int, category_id: int, box: list[float], **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": box, "iscrowd": 0, **extra}


class CocoKit:
    """The helpers above, handed to tests as a fixture (conftest modules are not importable)."""
    rle = staticmethod(rle)
    write = staticmethod(write_coco)
    write_image = staticmethod(write_image)
    image = staticmethod(image_entry)
    box = staticmethod(box_annotation)
