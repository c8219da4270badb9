"""Read any COCO detection / segmentation dataset as multi-task `Sample`s.

Class index i is the i-th category by ascending COCO id (`category_ids[i]`).
Per image: semantic mask (0 background, index+1 per class, crowd = IGNORE_INDEX),
boxes xyxy of the non-crowd objects, crowd boxes as ignore regions, an image label (the class with the
largest visible area) and a multi-hot of the classes with at least one
non-crowd object (all zero for an image without objects, which is known,
not missing). Annotations are validated eagerly; images are decoded lazily
in __getitem__.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from datasets.coco_checks import check_coco
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

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, position: int) -> Path:
        return self.images_root / self.coco.imgs[self.image_ids[position]]["file_name"]

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
        mask = self._semantic_mask(anns, image.shape[:2]) if self.has_masks else None
        objects = [ann for ann in anns if not ann["iscrowd"]]
        crowds = [ann for ann in anns if ann["iscrowd"]]
        boxes, labels = _xyxy_boxes(objects, image.shape[:2]), self._labels(objects)
        label, multi_label = image_targets(labels, boxes, mask, len(self.class_names))
        return RawRecord(
            image=image,
            image_id=image_id,
            label=label,
            mask=mask,
            boxes=boxes,
            box_labels=labels,
            multi_label=multi_label,
            # Crowds are regions where detections are neither right nor wrong, as in the official evaluation.
            ignore_boxes=_xyxy_boxes(crowds, image.shape[:2]),
            ignore_labels=self._labels(crowds),
        )

    def _labels(self, anns: list[dict]) -> np.ndarray:
        return np.array([self._class_of[ann["category_id"]] for ann in anns], np.int64)

    def _load_image(self, image_id: int) -> np.ndarray:
        entry = self.coco.imgs[image_id]
        where = f"{self.annotations}: images[{self._image_index[image_id]}]"
        try:
            image = self.read_image(self.images_root / entry["file_name"])
        except ValueError as error:
            raise ValueError(f"{where}.file_name: expected a decodable image: {error}") from error
        declared = (entry["height"], entry["width"])
        if image.shape[:2] != declared:
            raise ValueError(
                f"{where}: expected a {declared[1]}x{declared[0]} image as declared by width/height, "
                f"decoded {image.shape[1]}x{image.shape[0]} from {entry['file_name']}"
            )
        return image

    def _semantic_mask(self, anns: list[dict], size: tuple[int, int]) -> np.ndarray | None:
        if any(not ann.get("segmentation") for ann in anns):
            return None  # an object without outline: its pixels are unknown, so the whole mask is
        mask = np.zeros(size, np.uint8)
        # Crowd regions first, so an individually outlined object inside a crowd keeps its class.
        for ann in sorted(anns, key=lambda a: -a["iscrowd"]):  # stable: annotation order otherwise
            value = IGNORE_INDEX if ann["iscrowd"] else self._class_of[ann["category_id"]] + 1
            mask[self.coco.annToMask(ann).astype(bool)] = value
        return mask


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
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
