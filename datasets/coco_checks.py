"""Eager, cheap validation of a COCO annotation dict before the reader stores it (datasets/coco_storage.py).

Every message names the annotation file, the field and what was expected, e.g.
`annotations.json: annotations[12].bbox: expected 4 numbers [x, y, w, h] with w, h > 0, got [1, 2, -3, 4]`.
Structural problems (no `images` list, duplicate ids) always raise; a bad image
entry or annotation raises too, unless `skip_invalid`, in which case it is
dropped and the reason recorded. A dropped annotation of a kept image is still an object on that image: what
is valid of it (class, box, outline) is kept as a `DroppedAnnotation`, so the reader can mark its pixels and
box "unknown" instead of reading them as background.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from datasets.paths import is_inside, resolves_inside

@dataclass
class DroppedAnnotation:
    """What is still known of an annotation skipped (skip_invalid) on an image that is kept: an object is
    there, so its pixels and box are "unknown", not background. Each part is None where it was invalid."""
    image_id: int
    category_id: int | None           # one of categories[] ids, else None (the class is unknown)
    bbox: list[float] | None          # [x, y, w, h] overlapping the image
    segmentation: list | dict | None  # polygons or RLE of the image's size


@dataclass
class CheckedCoco:
    dataset: dict                               # only valid images and annotations, as in the file
    image_index: dict[int, int]                 # image id -> position in the file's images[] (for messages)
    skipped: dict[str, int] = field(default_factory=lambda: {"images": 0, "annotations": 0})
    reasons: list[str] = field(default_factory=list)  # every skipped entry's message
    dropped: list[DroppedAnnotation] = field(default_factory=list)  # skipped annotations of kept images


def check_coco(raw: object, source: Path, images_root: Path, skip_invalid: bool) -> CheckedCoco:
    _check_structure(raw, source)
    categories = _checked_categories(raw["categories"], source)
    checked = CheckedCoco(dataset={}, image_index={})
    images = _checked_images(raw["images"], source, images_root, skip_invalid, checked)
    declared_ids = {e.get("id") for e in raw["images"] if isinstance(e, dict) and _is_int(e.get("id"))}
    annotations = _checked_annotations(
        raw.get("annotations", []), source, images, declared_ids - images.keys(), {c["id"] for c in categories},
        skip_invalid, checked,
    )
    checked.dataset = {"images": list(images.values()), "annotations": annotations, "categories": categories}
    return checked


def _record(problem: Exception, kind: str, skip_invalid: bool, checked: CheckedCoco) -> None:
    if not skip_invalid:
        raise problem
    checked.skipped[kind] += 1
    checked.reasons.append(str(problem))


def _check_structure(raw: object, source: Path) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a JSON object with images, annotations and categories, got {type(raw).__name__}")
    for key in ("images", "categories"):
        if not isinstance(raw.get(key), list):
            raise ValueError(f"{source}: {key}: expected a list, got {_short(raw.get(key))}")
    # A file with images but no annotations key is valid (e.g. an unlabelled test split).
    if not isinstance(raw.get("annotations", []), list):
        raise ValueError(f"{source}: annotations: expected a list, got {_short(raw['annotations'])}")


def _checked_categories(categories: list, source: Path) -> list[dict]:
    seen: set[int] = set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{where}: expected {{'id': int, 'name': str}}, got {_short(cat)}")
        if cat["id"] in seen:
            raise ValueError(f"{where}.id: expected a unique category id, got duplicate {cat['id']}")
        seen.add(cat["id"])
    # 0 is the background and 255 the ignore value in the uint8 semantic mask.
    if len(categories) > 254:
        raise ValueError(f"{source}: categories: expected at most 254 categories, got {len(categories)}")
    return [{"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")} for c in categories]


def _checked_images(
    images: list, source: Path, images_root: Path, skip_invalid: bool, checked: CheckedCoco
) -> dict[int, dict]:
    valid: dict[int, dict] = {}
    seen: set[int] = set()
    for i, entry in enumerate(images):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if _is_int(image_id) and image_id in seen:
            raise ValueError(f"{source}: images[{i}].id: expected a unique image id, got duplicate {image_id}")
        problem = _image_problem(entry, f"{source}: images[{i}]", images_root)
        if problem is not None:
            _record(problem, "images", skip_invalid, checked)
            continue
        seen.add(image_id)
        valid[image_id] = entry
        checked.image_index[image_id] = i
    return valid


def _image_problem(entry: object, where: str, images_root: Path) -> Exception | None:
    if not isinstance(entry, dict):
        return ValueError(f"{where}: expected an object with id, file_name, width, height, got {_short(entry)}")
    if not _is_int(entry.get("id")):
        return ValueError(f"{where}.id: expected an integer, got {_short(entry.get('id'))}")
    for key in ("width", "height"):
        if not _is_int(entry.get(key)) or entry[key] <= 0:
            return ValueError(f"{where}.{key}: expected a positive integer, got {_short(entry.get(key))}")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        return ValueError(f"{where}.file_name: expected a non-empty string, got {_short(file_name)}")
    if not is_inside(file_name):
        return ValueError(f"{where}.file_name: expected a relative path inside the images root {images_root}, got {file_name!r}")
    path = images_root / file_name
    if not path.is_file():
        return FileNotFoundError(f"{where}.file_name: expected an existing image file, {path} not found")
    if not resolves_inside(path, images_root):  # the policy of every reader: datasets/paths.py
        return ValueError(f"{where}.file_name: {path} resolves outside the images root {images_root.resolve()} "
                          "(a symlink leading out of the dataset)")
    return None


def _checked_annotations(
    annotations: list, source: Path, images: dict[int, dict], skipped_image_ids: set[int], category_ids: set[int],
    skip_invalid: bool, checked: CheckedCoco,
) -> list[dict]:
    valid = []
    for i, ann in enumerate(annotations):
        if isinstance(ann, dict) and _is_int(ann.get("image_id")) and ann["image_id"] in skipped_image_ids:
            continue  # its image entry was invalid and already skipped and counted
        problem = _annotation_problem(ann, f"{source}: annotations[{i}]", images, category_ids)
        if problem is not None:
            _record(problem, "annotations", skip_invalid, checked)
            if isinstance(ann, dict) and _is_int(ann.get("image_id")) and ann["image_id"] in images:
                checked.dropped.append(_dropped(ann, images[ann["image_id"]], category_ids))
            continue
        valid.append(ann)
    return valid


def _dropped(ann: dict, image: dict, category_ids: set[int]) -> DroppedAnnotation:
    """The valid parts of a skipped annotation (by the same checks that made it invalid as a whole)."""
    category = ann.get("category_id")
    bbox, segmentation = ann.get("bbox"), ann.get("segmentation")
    return DroppedAnnotation(
        image_id=ann["image_id"],
        category_id=category if _is_int(category) and category in category_ids else None,
        bbox=[float(v) for v in bbox] if _bbox_problem(bbox, "", image) is None else None,
        segmentation=segmentation if segmentation and _segmentation_problem(segmentation, "", image) is None else None,
    )


def _annotation_problem(ann: object, where: str, images: dict[int, dict], category_ids: set[int]) -> Exception | None:
    if not isinstance(ann, dict):
        return ValueError(f"{where}: expected an object with image_id, category_id, bbox, got {_short(ann)}")
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
        return ValueError(f"{where}.image_id: expected the id of an entry in images[], got {_short(ann.get('image_id'))}")
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in category_ids:
        return ValueError(
            f"{where}.category_id: expected one of the categories[] ids {sorted(category_ids)}, got {_short(ann.get('category_id'))}"
        )
    if ann.get("iscrowd", 0) not in (0, 1):
        return ValueError(f"{where}.iscrowd: expected 0 or 1, got {_short(ann.get('iscrowd'))}")
    image = images[ann["image_id"]]
    return _bbox_problem(ann.get("bbox"), where, image) or _segmentation_problem(ann.get("segmentation"), where, image)


def _bbox_problem(bbox: object, where: str, image: dict) -> Exception | None:
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)
    if not numbers or bbox[2] <= 0 or bbox[3] <= 0:
        return ValueError(f"{where}.bbox: expected 4 numbers [x, y, w, h] with w, h > 0, got {_short(bbox)}")
    x, y, w, h = bbox
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return ValueError(
            f"{where}.bbox: expected a box overlapping the {image['width']}x{image['height']} image, got {bbox}"
        )
    return None


def _segmentation_problem(segmentation: object, where: str, image: dict) -> Exception | None:
    """Absent or empty segmentation is allowed (detection-only data); a malformed one is not."""
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, dict):
        size = [image["height"], image["width"]]
        counts = segmentation.get("counts")
        # Uncompressed counts are run lengths: pycocotools reads them as uint32, and none can exceed the image.
        runs_ok = isinstance(counts, list) and (not counts or set(map(type, counts)) == {int}
                                                and 0 <= min(counts) and max(counts) <= size[0] * size[1])
        if segmentation.get("size") != size or not (isinstance(counts, str) or runs_ok):
            return ValueError(
                f"{where}.segmentation: expected RLE {{'size': {size}, 'counts': str | list of run lengths "
                f"0..{size[0] * size[1]}}}, got {_short(segmentation)}"
            )
        return None
    polygons_ok = isinstance(segmentation, list) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and _all_finite_numbers(p) for p in segmentation
    )
    if not polygons_ok:
        return ValueError(
            f"{where}.segmentation: expected a list of polygons [x1, y1, x2, y2, x3, y3, ...] or an RLE dict, "
            f"got {_short(segmentation)}"
        )
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _all_finite_numbers(values: list) -> bool:
    """_is_finite_number of every value (JSON numbers are exactly int or float; bool is not int here), checked
    value by value in C rather than in a Python loop: COCO's polygons hold some 50 million numbers."""
    return set(map(type, values)) <= {int, float} and all(map(math.isfinite, values))


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
