"""Synthetic "shapes" dataset written as a real COCO dataset, deterministic by seed.

Each image has a smooth random colour gradient with mild noise and 1..max_shapes
circles, squares and triangles. Shapes may overlap; a later shape hides an
earlier one, so every annotation (RLE mask, area, bbox) describes only the
pixels that are actually visible.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CATEGORIES = [
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
]
DEFAULT_MIN_SHAPES, DEFAULT_MAX_SHAPES = 1, 4
MIN_VISIBLE_PIXELS = 20    # an instance hidden below this is not worth a label
SIZE_RANGE = (0.12, 0.40)  # shape size as a fraction of the image side
NOISE_STD = 0.04           # gaussian noise, fraction of the intensity range
MIN_COLOUR_DISTANCE = 0.4  # RGB distance (in [0,1] units) between a shape and the background under it


@dataclass
class Shape:
    category_id: int
    pixels: np.ndarray   # HxW bool, the full (unoccluded) shape
    colour: np.ndarray   # [3] float in [0,1]


def generate_shapes(
    out_dir: Path, num_images: int, image_size: int, seed: int,
    min_shapes: int = DEFAULT_MIN_SHAPES, max_shapes: int = DEFAULT_MAX_SHAPES,
) -> Path:
    """Write out_dir/images/*.png and out_dir/annotations.json; return the annotation path."""
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(num_images):
        file_name = f"images/{image_id:06d}.png"
        image, instances = _render_image(rng, image_size, int(rng.integers(min_shapes, max_shapes + 1)))
        cv2.imwrite(str(out_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for category_id, visible in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, visible))
    info = _generator_info(num_images, image_size, seed, min_shapes, max_shapes)
    coco = {"info": info, "images": images, "categories": CATEGORIES, "annotations": annotations}
    return _write_json_atomically(out_dir / "annotations.json", coco)


def generate_shapes_splits(root: Path, train: int, val: int, image_size: int, seed: int) -> None:
    """Write root/train and root/val (independent seeds); reuse them if already generated with these settings."""
    root = Path(root)
    # Derived seeds so that seed s and s+1 never share a split.
    train_seed, val_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    for name, count, split_seed in (("train", train, train_seed), ("val", val, val_seed)):
        out_dir = root / name
        if _already_generated(out_dir, _generator_info(count, image_size, split_seed, DEFAULT_MIN_SHAPES, DEFAULT_MAX_SHAPES)):
            continue
        generate_shapes(out_dir, count, image_size, split_seed)


def _generator_info(num_images: int, image_size: int, seed: int, min_shapes: int, max_shapes: int) -> dict:
    return {
        "description": "synthetic shapes",
        "num_images": num_images, "image_size": image_size, "seed": seed,
        "min_shapes": min_shapes, "max_shapes": max_shapes,
    }


def _already_generated(out_dir: Path, expected_info: dict) -> bool:
    path = out_dir / "annotations.json"
    if not path.exists():
        return False
    found = json.loads(path.read_text()).get("info")
    if found != expected_info:
        # Silently training on data made with other settings is worse than stopping.
        raise ValueError(
            f"{path}: info: expected a shapes dataset generated with {expected_info}, got {found}; "
            f"delete {out_dir} to regenerate"
        )
    return True


def _write_json_atomically(path: Path, content: dict) -> Path:
    # annotations.json is written last and atomically: its presence means the split is complete.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)
    return path


def _render_image(rng: np.random.Generator, size: int, num_shapes: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Return an RGB uint8 image and (category_id, visible HxW bool mask) per kept instance."""
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # index of the shape that owns each pixel
    shapes = []
    for index in range(num_shapes):
        # Drawn one at a time so each colour contrasts with whatever it covers, earlier shapes included.
        shape = _random_shape(rng, size, canvas)
        canvas[shape.pixels] = shape.colour
        owner[shape.pixels] = index
        shapes.append(shape)
    canvas += rng.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    visible = [(shape.category_id, owner == index) for index, shape in enumerate(shapes)]
    return image, [(cat, m) for cat, m in visible if m.sum() >= MIN_VISIBLE_PIXELS]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bilinear blend of four random mid-tone corner colours: smooth, but not flat."""
    corners = rng.uniform(0.2, 0.8, size=(2, 2, 3)).astype(np.float32)
    return cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)


def _random_shape(rng: np.random.Generator, size: int, canvas: np.ndarray) -> Shape:
    category_id = int(rng.integers(1, len(CATEGORIES) + 1))
    extent = rng.uniform(*SIZE_RANGE) * size
    centre = rng.uniform(extent / 2, size - extent / 2, size=2)
    angle = rng.uniform(0.0, 360.0)
    pixels = np.zeros((size, size), dtype=np.uint8)
    if category_id == 1:
        cv2.circle(pixels, _int_point(centre), int(round(extent / 2)), 1, thickness=-1)
    else:
        corners = _square_corners(centre, extent, angle) if category_id == 2 else _triangle_corners(centre, extent, angle)
        cv2.fillPoly(pixels, [np.round(corners).astype(np.int32)], 1)
    mask = pixels.astype(bool)
    return Shape(category_id, mask, _contrasting_colour(rng, canvas[mask].mean(axis=0) if mask.any() else canvas.mean((0, 1))))


def _int_point(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0])), int(round(point[1]))


def _square_corners(centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    return cv2.boxPoints(((float(centre[0]), float(centre[1])), (side, side), angle))


def _triangle_corners(centre: np.ndarray, extent: float, angle: float) -> np.ndarray:
    # Equilateral triangle whose circumscribed circle has diameter `extent`.
    thetas = np.deg2rad(angle + np.array([0.0, 120.0, 240.0]))
    return centre + (extent / 2) * np.stack([np.cos(thetas), np.sin(thetas)], axis=1)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Colour is independent of the class (the model must learn shape), but never blends in."""
    colour = rng.uniform(0.0, 1.0, 3)
    for _ in range(20):
        if np.linalg.norm(colour - background) >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0.0, 1.0, 3)
    else:
        colour = np.where(background > 0.5, 0.0, 1.0)  # the far corner of the RGB cube always contrasts
    return colour.astype(np.float32)


def _annotation(ann_id: int, image_id: int, category_id: int, visible: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
    ys, xs = np.nonzero(visible)
    # Pixel-edge convention: a box covering columns x0..x1 spans [x0, x1 + 1).
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": bbox, "area": float(visible.sum()), "iscrowd": 0, "segmentation": rle,
    }
