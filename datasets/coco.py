"""Read any COCO detection / segmentation dataset as multi-task `Sample`s.

Class index i is the i-th category by ascending COCO id (`category_ids[i]`).
Per image: semantic mask (0 background, index+1 per class, crowd = IGNORE_INDEX),
boxes xyxy of the non-crowd objects, crowd boxes as ignore regions, an image label (the class with the
largest visible area) and a multi-hot of the classes with at least one
non-crowd object (all zero for an image without objects, which is known,
not missing). Annotations are validated eagerly; images are decoded lazily
in __getitem__.

An annotation skipped as invalid (skip_invalid) on an image that is kept is an object whose labels are
unknown, not background: its pixels are IGNORE_INDEX (its outline where valid, else its box; neither valid:
the whole mask is unknown, None), its box an ignore region (of its class, or of every class when the class is
what was invalid), and the image's label and multi-hot, which it could have changed, are missing (None).

The validated annotations are held as numpy arrays (datasets/coco_storage.py), not as pycocotools' index of
dicts, which every forked DataLoader worker would copy page by page as it reads (pytorch/pytorch#13246).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from datasets.coco_checks import DroppedAnnotation, check_coco
from datasets.coco_storage import NO_SEGMENTATION, CocoTable, segmentation_rle
from datasets.header_cache import HeaderCache
from datasets.image_io import ImagePolicy
from datasets.reader import BOXES, IGNORE_REGIONS, AnnotationIndex, Reader, count_per_class
from datasets.record import RawRecord, image_targets
from datasets.sample import IGNORE_INDEX
from datasets.transforms import SampleTransform


class CocoDataset(Reader):
    def __init__(self, annotations: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.annotations = Path(annotations)
        self.images_root = Path(images_root) if images_root is not None else self.annotations.parent
        checked = check_coco(_read_json(self.annotations), self.annotations, self.images_root, skip_invalid)
        self.skipped, self.problems = checked.skipped, checked.reasons
        self.log_skipped()
        categories = sorted(checked.dataset["categories"], key=lambda category: category["id"])
        self.category_ids: list[int] = [category["id"] for category in categories]
        self.class_names: list[str] = [category["name"] for category in categories]
        if class_names is not None and list(class_names) != self.class_names:
            raise ValueError(f"{self.annotations}: categories: expected the classes {list(class_names)} (the "
                             f"training split's), got {self.class_names}")
        self._class_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self._table = CocoTable.build(checked.dataset, checked.image_index, self.category_ids)
        # A dataset without any segmentation is detection-only: its masks are missing, not empty.
        self.has_masks = bool((self._table.annotations.kind != NO_SEGMENTATION).any())
        self._dropped: dict[int, list[DroppedAnnotation]] = defaultdict(list)
        for dropped in checked.dropped:
            self._dropped[dropped.image_id].append(dropped)
        self._headers = HeaderCache()

    def __len__(self) -> int:
        return len(self._table.images.ids)

    @property
    def image_ids(self) -> np.ndarray:
        """int64 [N]: the COCO id of the image at each position."""
        return self._table.images.ids

    def file_name(self, position: int) -> str:
        return self._table.images.file_names.text(position)

    def image_path(self, position: int) -> Path:
        return self.images_root / self.file_name(position)

    def check_files(self, position: int) -> None:
        """The image's header decodes, at the width and height its entry declares."""
        try:
            size = self._headers.size(self.image_path(position), self.policy.exif_orientation)
        except ValueError as error:
            raise ValueError(f"{self._where(position)}.file_name: expected a decodable image: {error}") from error
        self._check_declared_size(position, size, f"the header of {self.file_name(position)} says "
                                                  f"{size[1]}x{size[0]}")

    def _keep(self, positions: list[int]) -> None:
        self._table = self._table.keep(positions)

    def box_sizes(self) -> np.ndarray:
        """[N, 4] (w, h, image width, image height) of every non-crowd box, in the file's order."""
        anns, images = self._table.annotations, self._table.images
        objects = ~anns.crowd
        image = anns.image[objects]
        return np.column_stack([anns.bbox[objects, 2:], images.widths[image], images.heights[image]]).astype(
            np.float32).reshape(-1, 4)

    def annotation_index(self) -> AnnotationIndex:
        """Boxes and crowd regions per class. Every object is an annotation with a box, so a class without a box
        has no mask pixel or image label either; those (largest visible area) need the masks rasterised."""
        anns = self._table.annotations
        count = len(self.class_names)
        boxes, crowds = count_per_class(anns.label[~anns.crowd], count), count_per_class(anns.label[anns.crowd], count)
        unlabelled = np.flatnonzero(self._table.by_image.lengths() == 0).tolist()
        targets = ["boxes", "labels"] + (["masks"] if self.has_masks else [])
        return AnnotationIndex({BOXES: boxes, IGNORE_REGIONS: crowds}, targets, unlabelled)

    def load(self, position: int) -> RawRecord:
        image_id = int(self.image_ids[position])
        image = self._load_image(position)
        size = image.shape[:2]
        rows = self._table.by_image[position]
        anns = self._table.annotations
        dropped = self._dropped.get(image_id, [])
        mask = self._semantic_mask(rows, dropped, size) if self.has_masks else None
        objects, crowds = rows[~anns.crowd[rows]], rows[anns.crowd[rows]]
        boxes, labels = _xyxy_boxes(anns.bbox[objects], size), anns.label[objects]
        label, multi_label = image_targets(labels, boxes, mask, len(self.class_names))
        if dropped:  # an object of unknown class or extent could have changed them
            label, multi_label = None, None
        unknown_boxes, unknown_labels = self._dropped_regions(dropped, size)
        return RawRecord(
            image=image,
            image_id=image_id,
            label=label,
            mask=mask,
            boxes=boxes,
            box_labels=labels,
            multi_label=multi_label,
            # Crowds are regions where detections are neither right nor wrong, as in the official evaluation;
            # so are the boxes of skipped annotations, where an object is whose annotation was invalid.
            ignore_boxes=np.concatenate([_xyxy_boxes(anns.bbox[crowds], size), unknown_boxes]),
            ignore_labels=np.concatenate([anns.label[crowds], unknown_labels]),
        )

    def _where(self, position: int) -> str:
        return f"{self.annotations}: images[{self._table.images.file_index[position]}]"

    def _load_image(self, position: int) -> np.ndarray:
        try:
            image = self.read_image(self.image_path(position))
        except ValueError as error:
            raise ValueError(f"{self._where(position)}.file_name: expected a decodable image: {error}") from error
        self._check_declared_size(position, image.shape[:2],
                                  f"decoded {image.shape[1]}x{image.shape[0]} from {self.file_name(position)}")
        return image

    def _check_declared_size(self, position: int, size: tuple[int, int], found: str) -> None:
        declared = self._table.size(position)
        if tuple(size) != declared:
            raise ValueError(f"{self._where(position)}: expected a {declared[1]}x{declared[0]} image as declared by "
                             f"width/height, {found}")

    def _semantic_mask(self, rows: np.ndarray, dropped: list[DroppedAnnotation],
                       size: tuple[int, int]) -> np.ndarray | None:
        anns = self._table.annotations
        if (anns.kind[rows] == NO_SEGMENTATION).any():
            return None  # an object without outline: its pixels are unknown, so the whole mask is
        mask = np.zeros(size, np.uint8)
        for skipped in dropped:  # first, like crowds: an outlined object on top keeps its class
            pixels = self._dropped_pixels(skipped, size)
            if pixels is None:
                return None  # an object somewhere, nothing valid says where: every pixel is unknown
            mask[pixels] = IGNORE_INDEX
        # Crowd regions first, so an individually outlined object inside a crowd keeps its class.
        for row in rows[np.argsort(~anns.crowd[rows], kind="stable")]:  # stable: annotation order otherwise
            value = IGNORE_INDEX if anns.crowd[row] else anns.label[row] + 1
            mask[self._table.mask(row).astype(bool)] = value
        return mask

    def _dropped_pixels(self, dropped: DroppedAnnotation, size: tuple[int, int]) -> np.ndarray | None:
        """[H, W] bool: the skipped annotation's outline where valid, else its box; None: neither is valid."""
        if dropped.segmentation is not None:
            return mask_utils.decode(segmentation_rle(dropped.segmentation, *size)) > 0
        if dropped.bbox is None:
            return None
        (x1, y1, x2, y2), = _xyxy_boxes(np.array([dropped.bbox]), size)
        pixels = np.zeros(size, bool)
        pixels[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True  # every pixel touched
        return pixels

    def _dropped_regions(self, dropped: list[DroppedAnnotation],
                         size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Ignore regions where skipped annotations are (their box, else their outline's extent): of their class,
        or, where the class was what was invalid, one per class (evaluation matches ignore regions by class)."""
        boxes, labels = [], []
        for skipped in dropped:
            box = self._dropped_box(skipped, size)
            if box is None:
                continue
            classes = ([self._class_of[skipped.category_id]] if skipped.category_id is not None
                       else range(len(self.class_names)))
            boxes += [box] * len(classes)
            labels += list(classes)
        return _xyxy_boxes(np.array(boxes), size), np.array(labels, np.int64)

    def _dropped_box(self, dropped: DroppedAnnotation, size: tuple[int, int]) -> list[float] | None:
        if dropped.bbox is not None:
            return dropped.bbox
        if dropped.segmentation is None:
            return None
        box = [float(v) for v in mask_utils.toBbox(segmentation_rle(dropped.segmentation, *size))]
        return box if box[2] > 0 and box[3] > 0 else None


def _read_json(path: Path) -> object:
    text = path.read_text()
    if not text.strip():  # say what the JSON parser would not: the split has no images at all
        raise ValueError(f"{path}: expected a COCO JSON file with images, annotations and categories, got an empty "
                         f"file: the split has no images")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: expected a COCO JSON file: {error}") from error


def _xyxy_boxes(xywh: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    boxes = np.array(xywh, np.float32).reshape(-1, 4)  # a copy: the stored boxes stay as they are
    boxes[:, 2:] += boxes[:, :2]
    # COCO boxes may overhang the border by a pixel; transforms expect them inside.
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes
