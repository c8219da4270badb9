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
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets.coco_checks import DroppedAnnotation, check_coco
from datasets.image_header import header_size
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
        self.coco = _index(checked.dataset)
        self._image_index = checked.image_index
        self.image_ids: list[int] = [image["id"] for image in checked.dataset["images"]]
        self.category_ids: list[int] = sorted(self.coco.cats)
        self.class_names: list[str] = [self.coco.cats[cid]["name"] for cid in self.category_ids]
        if class_names is not None and list(class_names) != self.class_names:
            raise ValueError(f"{self.annotations}: categories: expected the classes {list(class_names)} (the "
                             f"training split's), got {self.class_names}")
        self._class_of = {cid: i for i, cid in enumerate(self.category_ids)}
        # A dataset without any segmentation is detection-only: its masks are missing, not empty.
        self.has_masks = any(ann.get("segmentation") for ann in checked.dataset["annotations"])
        self._dropped: dict[int, list[DroppedAnnotation]] = defaultdict(list)
        for dropped in checked.dropped:
            self._dropped[dropped.image_id].append(dropped)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, position: int) -> Path:
        return self.images_root / self.coco.imgs[self.image_ids[position]]["file_name"]

    def check_files(self, position: int) -> None:
        """The image's header decodes, at the width and height its entry declares."""
        image_id = self.image_ids[position]
        try:
            size = header_size(self.image_path(position), self.policy.exif_orientation)
        except ValueError as error:
            raise ValueError(f"{self._where(image_id)}.file_name: expected a decodable image: {error}") from error
        self._check_declared_size(image_id, size, f"the header of {self.coco.imgs[image_id]['file_name']} says "
                                                  f"{size[1]}x{size[0]}")

    def _keep(self, positions: list[int]) -> None:
        kept = {self.image_ids[position] for position in positions}
        dataset = self.coco.dataset
        self.coco = _index({**dataset, "images": [image for image in dataset["images"] if image["id"] in kept],
                            "annotations": [ann for ann in dataset["annotations"] if ann["image_id"] in kept]})
        self.image_ids = [self.image_ids[position] for position in positions]

    def box_sizes(self) -> np.ndarray:
        """[N, 4] (w, h, image width, image height) of every non-crowd box."""
        rows = [(*ann["bbox"][2:], self.coco.imgs[ann["image_id"]]["width"], self.coco.imgs[ann["image_id"]]["height"])
                for ann in self.coco.dataset["annotations"] if not ann["iscrowd"]]
        return np.array(rows, np.float32).reshape(-1, 4)

    def annotation_index(self) -> AnnotationIndex:
        """Boxes and crowd regions per class. Every object is an annotation with a box, so a class without a box
        has no mask pixel or image label either; those (largest visible area) need the masks rasterised."""
        anns = self.coco.dataset["annotations"]
        count = len(self.class_names)
        boxes = count_per_class([self._class_of[a["category_id"]] for a in anns if not a["iscrowd"]], count)
        crowds = count_per_class([self._class_of[a["category_id"]] for a in anns if a["iscrowd"]], count)
        unlabelled = [i for i, image_id in enumerate(self.image_ids) if not self.coco.imgToAnns.get(image_id)]
        targets = ["boxes", "labels"] + (["masks"] if self.has_masks else [])
        return AnnotationIndex({BOXES: boxes, IGNORE_REGIONS: crowds}, targets, unlabelled)

    def load(self, position: int) -> RawRecord:
        image_id = self.image_ids[position]
        image = self._load_image(image_id)
        anns = self.coco.imgToAnns.get(image_id, [])
        dropped = self._dropped.get(image_id, [])
        mask = self._semantic_mask(anns, dropped, image.shape[:2]) if self.has_masks else None
        objects = [ann for ann in anns if not ann["iscrowd"]]
        crowds = [ann for ann in anns if ann["iscrowd"]]
        boxes, labels = _xyxy_boxes(objects, image.shape[:2]), self._labels(objects)
        label, multi_label = image_targets(labels, boxes, mask, len(self.class_names))
        if dropped:  # an object of unknown class or extent could have changed them
            label, multi_label = None, None
        unknown_boxes, unknown_labels = self._dropped_regions(dropped, image.shape[:2])
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
            ignore_boxes=np.concatenate([_xyxy_boxes(crowds, image.shape[:2]), unknown_boxes]),
            ignore_labels=np.concatenate([self._labels(crowds), unknown_labels]),
        )

    def _labels(self, anns: list[dict]) -> np.ndarray:
        return np.array([self._class_of[ann["category_id"]] for ann in anns], np.int64)

    def _where(self, image_id: int) -> str:
        return f"{self.annotations}: images[{self._image_index[image_id]}]"

    def _load_image(self, image_id: int) -> np.ndarray:
        entry = self.coco.imgs[image_id]
        try:
            image = self.read_image(self.images_root / entry["file_name"])
        except ValueError as error:
            raise ValueError(f"{self._where(image_id)}.file_name: expected a decodable image: {error}") from error
        self._check_declared_size(image_id, image.shape[:2],
                                  f"decoded {image.shape[1]}x{image.shape[0]} from {entry['file_name']}")
        return image

    def _check_declared_size(self, image_id: int, size: tuple[int, int], found: str) -> None:
        entry = self.coco.imgs[image_id]
        declared = (entry["height"], entry["width"])
        if tuple(size) != declared:
            raise ValueError(f"{self._where(image_id)}: expected a {declared[1]}x{declared[0]} image as declared by "
                             f"width/height, {found}")

    def _semantic_mask(self, anns: list[dict], dropped: list[DroppedAnnotation],
                       size: tuple[int, int]) -> np.ndarray | None:
        if any(not ann.get("segmentation") for ann in anns):
            return None  # an object without outline: its pixels are unknown, so the whole mask is
        mask = np.zeros(size, np.uint8)
        for skipped in dropped:  # first, like crowds: an outlined object on top keeps its class
            pixels = self._dropped_pixels(skipped, size)
            if pixels is None:
                return None  # an object somewhere, nothing valid says where: every pixel is unknown
            mask[pixels] = IGNORE_INDEX
        # Crowd regions first, so an individually outlined object inside a crowd keeps its class.
        for ann in sorted(anns, key=lambda a: -a["iscrowd"]):  # stable: annotation order otherwise
            value = IGNORE_INDEX if ann["iscrowd"] else self._class_of[ann["category_id"]] + 1
            mask[self.coco.annToMask(ann).astype(bool)] = value
        return mask

    def _dropped_pixels(self, dropped: DroppedAnnotation, size: tuple[int, int]) -> np.ndarray | None:
        """[H, W] bool: the skipped annotation's outline where valid, else its box; None: neither is valid."""
        if dropped.segmentation is not None:
            return self.coco.annToMask({"image_id": dropped.image_id, "segmentation": dropped.segmentation}) > 0
        if dropped.bbox is None:
            return None
        (x1, y1, x2, y2), = _xyxy_boxes([{"bbox": dropped.bbox}], size)
        pixels = np.zeros(size, bool)
        pixels[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True  # every pixel touched
        return pixels

    def _dropped_regions(self, dropped: list[DroppedAnnotation],
                         size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Ignore regions where skipped annotations are (their box, else their outline's extent): of their class,
        or, where the class was what was invalid, one per class (evaluation matches ignore regions by class)."""
        boxes, labels = [], []
        for skipped in dropped:
            box = self._dropped_box(skipped)
            if box is None:
                continue
            classes = ([self._class_of[skipped.category_id]] if skipped.category_id is not None
                       else range(len(self.class_names)))
            boxes += [box] * len(classes)
            labels += list(classes)
        return _xyxy_boxes([{"bbox": box} for box in boxes], size), np.array(labels, np.int64)

    def _dropped_box(self, dropped: DroppedAnnotation) -> list[float] | None:
        if dropped.bbox is not None:
            return dropped.bbox
        if dropped.segmentation is None:
            return None
        rle = self.coco.annToRLE({"image_id": dropped.image_id, "segmentation": dropped.segmentation})
        box = [float(v) for v in mask_utils.toBbox(rle)]
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


def _index(dataset: dict) -> COCO:
    coco = COCO()  # empty: we hand it the already-validated dict instead of a path
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _xyxy_boxes(objects: list[dict], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    boxes = np.array([ann["bbox"] for ann in objects], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    # COCO boxes may overhang the border by a pixel; transforms expect them inside.
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes
