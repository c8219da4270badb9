"""Read an Ultralytics YOLO dataset (detection, or YOLO-seg polygons) as multi-task `Sample`s.

    data.yaml               path: dataset root (optional; relative to this file's folder; default its folder)
                            train / val: an images folder, a .txt list of image paths, or a list of those,
                                         each relative to `path`
                            names: [a, b, ...] or {0: a, 1: b, ...} (indices 0..C-1)
    images/train/x.jpg      any image format, sub-folders allowed
    labels/train/x.txt      one object per line, normalised to [0, 1] by the image's width and height:
                              class cx cy w h                  a box
                              class x1 y1 x2 y2 ... xn yn      a polygon (YOLO-seg, n >= 3)

Ultralytics' rules, kept so its datasets read unchanged: an image's label file is its path with the LAST
`images` folder component replaced by `labels` and the suffix by `.txt` (no `images` component: the .txt
beside the image); a missing or empty label file is an image without objects (background), not an error;
lines of an image list are relative to the list's folder (a leading `./` too); a `train`/`val` entry starting
with `../` that does not exist is read without it (Roboflow exports write `../train/images` beside data.yaml).

Every path stays inside the dataset root (datasets/paths.py): `..` and absolute paths in data.yaml's splits
are refused; such paths in image lists, and image and label files whose real path (through symlinks) leaves
their tree, are an error or, with `skip_invalid`, a counted skip of their image.

A polygon's box is its extent, and polygons are drawn into the semantic mask (class index + 1, later lines on
top) with pycocotools, exactly as the same polygon in a COCO file (cv2.fillPoly would add a row and a column
of edge pixels, so mask and box would disagree). The split has masks only if all its objects are polygons;
one box line makes every mask missing (None), since its pixels are unknown.

Label files are parsed eagerly (text is cheap); a bad line raises, naming the file and line, or with
`skip_invalid` drops that image (Ultralytics drops a corrupt label file whole too), counted in skipped["images"].
image_id is the position in the split (images sorted by path).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from datasets.image_header import header_size
from datasets.image_io import IMAGE_SUFFIXES, ImagePolicy
from datasets.images import files_inside
from datasets.paths import is_inside, resolves_inside
from datasets.reader import BOXES, AnnotationIndex, Reader, count_per_class
from datasets.record import RawRecord, image_targets
from datasets.transforms import SampleTransform

logger = logging.getLogger(__name__)

TOLERANCE = 1e-3   # exporters' float rounding puts coordinates a hair outside [0, 1]; those are clipped
MAX_MASK_CLASSES = 254  # 0 is the background and 255 the ignore value of a uint8 mask
LINE_FORMAT = "'class cx cy w h' (a box) or 'class x1 y1 x2 y2 ... xn yn' (a polygon, n >= 3)"


@dataclass
class _Objects:
    """One image's label file, normalised."""
    classes: np.ndarray                  # [N] int64
    boxes: np.ndarray                    # [N, 4] float64 xyxy in [0, 1]
    polygons: list[np.ndarray | None]    # [K, 2] points in [0, 1] per object; None for a box line


class YoloTxtDataset(Reader):
    def __init__(self, annotations: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.annotations = Path(annotations)
        config = _read_yaml(self.annotations)
        self.root = _dataset_root(config, self.annotations)
        self.class_names = _names(config, self.annotations)
        if class_names is not None and list(class_names) != self.class_names:
            raise ValueError(f"{self.annotations}: names: expected the classes {list(class_names)} (the training "
                             f"split's), got {self.class_names}")
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files
        self.images: list[Path] = []
        self.objects: list[_Objects] = []
        self._read_split(self._split_images(config, split, images_root), split)
        polygons = [p is not None for objects in self.objects for p in objects.polygons]
        self.has_masks = bool(polygons) and all(polygons)
        if any(polygons) and not self.has_masks:
            logger.warning("%s: split %s: %d of %d objects are polygons, the rest boxes; the split has no masks "
                           "(a box's pixels are unknown)", self.annotations, split, sum(polygons), len(polygons))
        if self.has_masks and len(self.class_names) > MAX_MASK_CLASSES:
            raise ValueError(f"{self.annotations}: names: expected at most {MAX_MASK_CLASSES} classes for polygon "
                             f"masks (0 = background, 255 = ignore), got {len(self.class_names)}")

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, position: int) -> Path:
        return self.images[position]

    def _keep(self, positions: list[int]) -> None:
        self.images = [self.images[position] for position in positions]
        self.objects = [self.objects[position] for position in positions]

    def load(self, position: int) -> RawRecord:
        image = self.read_image(self.images[position])
        height, width = image.shape[:2]
        objects = self.objects[position]
        boxes = (objects.boxes * [width, height, width, height]).astype(np.float32)
        mask = self._mask(objects, height, width) if self.has_masks else None
        label, multi_label = image_targets(objects.classes, boxes, mask, len(self.class_names))
        return RawRecord(
            image=image, image_id=position, label=label, mask=mask,
            boxes=boxes, box_labels=objects.classes.copy(), multi_label=multi_label,
            ignore_boxes=np.zeros((0, 4), np.float32), ignore_labels=np.zeros(0, np.int64),  # YOLO has none
        )

    def annotation_index(self) -> AnnotationIndex:
        classes = [objects.classes for objects in self.objects]
        boxes = count_per_class(np.concatenate(classes), len(self.class_names))
        unlabelled = [i for i, found in enumerate(classes) if len(found) == 0]
        return AnnotationIndex({BOXES: boxes}, ["boxes", "labels"] + (["masks"] if self.has_masks else []), unlabelled)

    def box_sizes(self) -> np.ndarray:
        """[N, 4] box w, h and image w, h in pixels, image sizes read from file headers (nothing decoded). An
        image whose header cannot be read is left out: reading it reports the problem."""
        rows = []
        for image, objects in zip(self.images, self.objects):
            if len(objects.classes) == 0:
                continue
            size = self._size_on_disk(image)
            if size is None:
                continue
            extent = (objects.boxes[:, 2:] - objects.boxes[:, :2]) * size
            rows += [(w, h, *size) for w, h in extent]
        return np.array(rows, np.float32).reshape(-1, 4)

    # ---- reading -------------------------------------------------------------------------------

    def _read_split(self, images: list[Path], split: str) -> None:
        """Each image with its parsed label file; an image whose label file is bad is skipped (or raises)."""
        labelled = 0
        for image in images:
            label = label_path(image)
            try:
                objects = self._read_labels(label)
            except ValueError as error:
                self.skip("images", error)
                continue
            labelled += label.is_file()
            self.images.append(image)
            self.objects.append(objects)
        self.log_skipped()
        if not self.images:
            raise ValueError(f"{self.annotations}: {split}: expected at least one readable image, found none")
        if not labelled:  # legal (all background), but usually a layout mistake: say where labels were looked for
            logger.warning("%s: %s: no label file found for any image, e.g. %s; every image reads as background",
                           self.annotations, split, label_path(self.images[0]))

    def _split_images(self, config: dict, split: str, images_root: Path | None) -> list[Path]:
        if images_root is not None:  # the config's own folder replaces data.yaml's entry
            return files_inside(Path(images_root), IMAGE_SUFFIXES, self._refuse)
        entries = config.get(split)
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) and e for e in entries):
            raise ValueError(f"{self.annotations}: {split}: expected an images folder, a .txt list of images or a "
                             f"list of those, relative to path {self.root}, got {entries!r}")
        images: list[Path] = []
        for entry in entries:
            source = self._split_entry(entry, split)
            images += self._listed_images(source) if source.is_file() else files_inside(source, IMAGE_SUFFIXES,
                                                                                        self._refuse)
        return sorted(images)  # as Ultralytics: one order, whatever the entries' order

    def _split_entry(self, entry: str, split: str) -> Path:
        where = f"{self.annotations}: {split}: {entry!r}"
        if entry.startswith("../") and not (self.root / entry).exists() and (self.root / entry[3:]).exists():
            entry = entry[3:]  # Ultralytics' fallback for Roboflow's data.yaml
        if not is_inside(entry):
            raise ValueError(f"{where}: expected a path inside the dataset root {self.root} (set data.yaml's "
                             f"path: to a folder holding it)")
        path = self.root / entry
        if not path.exists():
            raise FileNotFoundError(f"{where}: expected an images folder or a .txt image list, {path} not found")
        return path

    def _listed_images(self, listing: Path) -> list[Path]:
        """The images of a .txt list, one path per line relative to the list's folder; a bad line raises or,
        with skip_invalid, is counted and left out."""
        folder = os.path.relpath(listing.parent, self.root)
        images = []
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if line.strip():
                path = self._listed_image(line.strip(), folder, f"{listing}: line {number}")
                if isinstance(path, Exception):
                    self.skip("images", path)
                else:
                    images.append(path)
        return images

    def _listed_image(self, name: str, folder: str, where: str) -> Path | Exception:
        relative = os.path.normpath(os.path.join(folder, name))
        if os.path.isabs(name) or not is_inside(relative):
            return ValueError(f"{where}: expected an image path inside the dataset root {self.root}, got {name!r}")
        path = self.root / relative
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return ValueError(f"{where}: expected an image file ({', '.join(sorted(IMAGE_SUFFIXES))}), got {name!r}")
        if not path.is_file():
            return FileNotFoundError(f"{where}: expected an existing image, {path} not found")
        if not resolves_inside(path, self.root):
            return ValueError(f"{where}: {path} resolves outside the dataset root {self.root.resolve()}")
        return path

    def _read_labels(self, label: Path) -> _Objects:
        if not label.is_file():
            return _Objects(np.zeros(0, np.int64), np.zeros((0, 4)), [])  # Ultralytics: a background image
        tree = labels_tree(label)
        if not resolves_inside(label, tree):
            raise ValueError(f"{label}: resolves outside its labels folder {tree.resolve()}")
        parsed = [_parse_line(text, f"{label}: line {number}", len(self.class_names))
                  for number, text in enumerate(label.read_text().splitlines(), start=1) if text.strip()]
        classes = np.array([cls for cls, _, _ in parsed], np.int64)
        boxes = np.array([box for _, box, _ in parsed], np.float64).reshape(-1, 4)
        return _Objects(classes, boxes, [polygon for _, _, polygon in parsed])

    def _refuse(self, error: Exception) -> None:
        self.skip("images", error)

    def _size_on_disk(self, image: Path) -> np.ndarray | None:
        """(width, height) as the image is read (EXIF orientation applied), from its header."""
        try:
            height, width = header_size(image, self.policy.exif_orientation)
        except (OSError, ValueError):
            return None
        return np.array([width, height], np.float64)

    # ---- targets -------------------------------------------------------------------------------

    def _mask(self, objects: _Objects, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), np.uint8)
        for cls, polygon in zip(objects.classes, objects.polygons):
            flat = (polygon * [width, height]).ravel().tolist()
            drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], height, width)))
            mask[drawn.astype(bool)] = cls + 1
        return mask


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` component becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        last = len(parts) - 2 - parts[-2::-1].index("images")
        parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def labels_tree(label: Path) -> Path:
    """The folder a label file must stay inside: the `labels` folder its path was derived through."""
    parts = label.parts
    if "labels" in parts[:-1]:
        return Path(*parts[: len(parts) - 1 - parts[-2::-1].index("labels")])
    return label.parent


def _parse_line(text: str, where: str, num_classes: int) -> tuple[int, list[float], np.ndarray | None]:
    """(class index, normalised xyxy box, polygon points or None) of one label line."""
    values = text.split()
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        numbers = []
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise ValueError(f"{where}: expected numbers {LINE_FORMAT}, got {text.strip()!r}")
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise ValueError(f"{where}: expected 5 values or an odd number >= 7: {LINE_FORMAT}, got {len(values)} values")
    if not numbers[0].is_integer() or not 0 <= numbers[0] < num_classes:
        raise ValueError(f"{where}: class: expected an integer index 0..{num_classes - 1} (data.yaml names), "
                         f"got {values[0]}")
    coords = np.array(numbers[1:])
    outside = (coords < -TOLERANCE) | (coords > 1 + TOLERANCE)
    if outside.any():
        raise ValueError(f"{where}: expected coordinates normalised to [0, 1] by the image size, got "
                         f"{values[1 + int(np.argmax(outside))]}")
    coords = coords.clip(0.0, 1.0)
    if len(values) == 5:
        cx, cy, w, h = coords
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: expected a box width and height > 0, got w {values[3]}, h {values[4]}")
        box = [max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)]
        return int(numbers[0]), box, None
    points = coords.reshape(-1, 2)
    box = [*points.min(axis=0), *points.max(axis=0)]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{where}: expected a polygon with a width and height > 0, got all points on one line")
    return int(numbers[0]), box, points


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected an Ultralytics data.yaml (path, train, val, names)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: expected YAML: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping with path, train, val and names, got {type(config).__name__}")
    return config


def _dataset_root(config: dict, source: Path) -> Path:
    """data.yaml's `path` (the user's pointer to the dataset, so it may lead anywhere), else the yaml's folder."""
    given = config.get("path")
    if given in (None, ""):
        return source.parent
    if not isinstance(given, str):
        raise ValueError(f"{source}: path: expected the dataset folder, got {given!r}")
    root = source.parent / given  # an absolute path replaces the yaml's folder
    if not root.is_dir():
        raise FileNotFoundError(f"{source}: path: expected the dataset folder (relative to {source.parent}), "
                                f"{root} not found")
    return root


def _names(config: dict, source: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise ValueError(f"{source}: names: expected indices 0..{len(names) - 1} as keys, got {list(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{source}: names: expected a list of class names or {{index: name}}, got {names!r}")
    for i, name in enumerate(names):
        if not isinstance(name, (str, int, float)) or isinstance(name, bool) or str(name) == "":
            raise ValueError(f"{source}: names[{i}]: expected a class name, got {name!r}")
    names = [str(name) for name in names]  # YAML reads a name like 1 or 3.5 as a number
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: names: expected unique class names, got {names}")
    if "nc" in config and config["nc"] != len(names):
        raise ValueError(f"{source}: nc: expected the number of names, {len(names)}, got {config['nc']!r}")
    return names
