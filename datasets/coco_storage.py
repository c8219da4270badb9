"""A COCO split's images and annotations as a few numpy arrays: what the reader keeps per image.

Why not dicts: DataLoader workers are forked, and a page of the parent's memory stays shared only while no
one writes to it. Reading a Python object writes its reference count (and the garbage collector writes every
container's header), so a dict per image or annotation, as pycocotools' index holds, is copied page by page
into every worker as it reads: at COCO's 860k annotations, gigabytes per worker (pytorch/pytorch#13246).
Here every field is one numpy array however many rows there are, and a variable-length field (file names,
polygons, RLE) is one flat array plus row offsets (`Ragged`): reading a row slices arrays and writes nothing
shared. Python objects for one image's annotations exist only while that image is read.

Segmentations keep pycocotools' own form and precision (polygon coordinates as float64, RLE strings as their
bytes, uncompressed counts as uint32, which is what pycocotools converts them to), and `segmentation_rle` is
pycocotools' `COCO.annToRLE` without the index, so masks come out the same pixel for pixel.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pycocotools import mask as mask_utils

# What an annotation's segmentation is (CocoAnnotations.kind).
NO_SEGMENTATION, POLYGONS, RLE_STRING, RLE_COUNTS = 0, 1, 2, 3


@dataclass(frozen=True)
class Ragged:
    """Rows of different lengths: row i is values[offsets[i]:offsets[i + 1]]."""
    values: np.ndarray
    offsets: np.ndarray  # int64 [rows + 1], offsets[0] == 0

    @classmethod
    def of(cls, rows: Sequence[Sequence], dtype: type) -> Ragged:
        return cls.joined(map(len, rows), itertools.chain.from_iterable(rows), len(rows), dtype)

    @classmethod
    def joined(cls, lengths: Iterable[int], values: Iterable, rows: int, dtype: type) -> Ragged:
        """`rows` rows of these lengths, whose values one row after the other are `values`."""
        offsets = _offsets(np.fromiter(lengths, np.int64, rows))
        return cls(np.fromiter(values, dtype, int(offsets[-1])), offsets)

    @classmethod
    def of_bytes(cls, rows: Sequence[bytes]) -> Ragged:
        offsets = _offsets(np.fromiter(map(len, rows), np.int64, len(rows)))
        return cls(np.frombuffer(b"".join(rows), np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        return self.values[self.offsets[row]:self.offsets[row + 1]]

    def text(self, row: int) -> str:
        return self[row].tobytes().decode()

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Ragged:
        """These rows, in this order."""
        lengths = self.lengths()[rows]
        offsets = _offsets(lengths)
        starts = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return Ragged(self.values[starts + np.arange(offsets[-1])], offsets)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass(frozen=True)
class CocoImages:
    """The split's image entries, in the file's order (of those kept)."""
    ids: np.ndarray          # int64 [N] COCO image id
    file_index: np.ndarray   # int64 [N] position in the file's images[], for messages
    heights: np.ndarray      # int64 [N] as declared
    widths: np.ndarray       # int64 [N]
    file_names: Ragged       # UTF-8 bytes of each file_name

    def take(self, rows: np.ndarray) -> CocoImages:
        return CocoImages(self.ids[rows], self.file_index[rows], self.heights[rows], self.widths[rows],
                          self.file_names.take(rows))


@dataclass(frozen=True)
class CocoAnnotations:
    """The valid annotations, in the file's order; one row each in every field."""
    image: np.ndarray        # int64 [A] position of its image in CocoImages
    label: np.ndarray        # int64 [A] class index (categories by ascending id)
    bbox: np.ndarray         # float32 [A, 4] x, y, w, h: every consumer computes boxes in float32
    crowd: np.ndarray        # bool [A]
    kind: np.ndarray         # int8 [A] NO_SEGMENTATION | POLYGONS | RLE_STRING | RLE_COUNTS
    coords: Ragged           # float64: a POLYGONS row's polygons, x1, y1, x2, y2, ... one after the other
    polygon_ends: Ragged     # int64: where in its coords row each polygon ends
    rle: Ragged              # uint8: a RLE_STRING row's compressed counts
    counts: Ragged           # uint32: a RLE_COUNTS row's uncompressed counts

    def take(self, rows: np.ndarray) -> CocoAnnotations:
        return CocoAnnotations(self.image[rows], self.label[rows], self.bbox[rows], self.crowd[rows], self.kind[rows],
                               self.coords.take(rows), self.polygon_ends.take(rows), self.rle.take(rows),
                               self.counts.take(rows))


@dataclass(frozen=True)
class CocoTable:
    images: CocoImages
    annotations: CocoAnnotations
    by_image: Ragged         # int64: each image's annotation rows, in the file's order

    @classmethod
    def build(cls, dataset: dict, image_index: dict[int, int], category_ids: list[int]) -> CocoTable:
        """From check_coco's validated dict (datasets/coco_checks.py): every field is known to be well formed."""
        images = _images(dataset["images"], image_index)
        position = {int(image_id): i for i, image_id in enumerate(images.ids)}
        annotations = _annotations(dataset["annotations"], position, category_ids)
        return cls(images, annotations, _by_image(annotations.image, len(images.ids)))

    def keep(self, positions: Sequence[int]) -> CocoTable:
        """Only the images at these positions, in this order, and their annotations."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        moved = np.full(len(self.images.ids), -1, np.int64)
        moved[positions] = np.arange(len(positions))
        rows = np.flatnonzero(moved[self.annotations.image] >= 0)
        annotations = self.annotations.take(rows)
        annotations = replace(annotations, image=moved[annotations.image])
        return CocoTable(self.images.take(positions), annotations, _by_image(annotations.image, len(positions)))

    def size(self, position: int) -> tuple[int, int]:
        """(height, width) as declared."""
        return int(self.images.heights[position]), int(self.images.widths[position])

    def segmentation(self, row: int) -> list[np.ndarray] | dict | None:
        """Annotation `row`'s segmentation in the form pycocotools reads it; None where it has none."""
        anns = self.annotations
        kind = anns.kind[row]
        size = list(self.size(anns.image[row]))
        if kind == POLYGONS:
            return np.split(anns.coords[row], anns.polygon_ends[row][:-1])
        if kind == RLE_STRING:
            return {"size": size, "counts": anns.rle[row].tobytes()}
        if kind == RLE_COUNTS:
            return {"size": size, "counts": anns.counts[row]}
        return None

    def mask(self, row: int) -> np.ndarray:
        """[H, W] uint8 of annotation `row`'s pixels, as pycocotools' COCO.annToMask gives them."""
        height, width = self.size(self.annotations.image[row])
        return mask_utils.decode(segmentation_rle(self.segmentation(row), height, width))


def segmentation_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """pycocotools' COCO.annToRLE, for a segmentation of a height x width image."""
    if isinstance(segmentation, list):  # polygons: one object may have several parts, merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], str | bytes):
        return segmentation
    return mask_utils.frPyObjects(segmentation, height, width)  # uncompressed counts


def _images(entries: list[dict], image_index: dict[int, int]) -> CocoImages:
    count = len(entries)
    ids = np.fromiter((entry["id"] for entry in entries), np.int64, count)
    return CocoImages(
        ids=ids,
        file_index=np.fromiter((image_index[entry["id"]] for entry in entries), np.int64, count),
        heights=np.fromiter((entry["height"] for entry in entries), np.int64, count),
        widths=np.fromiter((entry["width"] for entry in entries), np.int64, count),
        file_names=Ragged.of_bytes([entry["file_name"].encode() for entry in entries]),
    )


def _annotations(anns: list[dict], position: dict[int, int], category_ids: list[int]) -> CocoAnnotations:
    count = len(anns)
    class_of = {category_id: index for index, category_id in enumerate(category_ids)}
    segmentations = [ann.get("segmentation") for ann in anns]
    kind = np.fromiter(map(_kind, segmentations), np.int8, count)
    polygons = [segmentation if k == POLYGONS else [] for segmentation, k in zip(segmentations, kind)]
    return CocoAnnotations(
        image=np.fromiter((position[ann["image_id"]] for ann in anns), np.int64, count),
        label=np.fromiter((class_of[ann["category_id"]] for ann in anns), np.int64, count),
        bbox=np.fromiter(itertools.chain.from_iterable(ann["bbox"] for ann in anns), np.float32,
                         4 * count).reshape(count, 4),
        crowd=np.fromiter((ann.get("iscrowd", 0) for ann in anns), bool, count),
        kind=kind,
        coords=Ragged.joined((sum(map(len, parts)) for parts in polygons),
                             itertools.chain.from_iterable(itertools.chain.from_iterable(polygons)), count, np.float64),
        polygon_ends=Ragged.of([list(itertools.accumulate(map(len, parts))) for parts in polygons], np.int64),
        rle=Ragged.of_bytes([s["counts"].encode() if k == RLE_STRING else b"" for s, k in zip(segmentations, kind)]),
        counts=Ragged.of([s["counts"] if k == RLE_COUNTS else () for s, k in zip(segmentations, kind)], np.uint32),
    )


def _kind(segmentation: list | dict | None) -> int:
    if not segmentation:
        return NO_SEGMENTATION  # absent or empty: a detection-only annotation
    if isinstance(segmentation, list):
        return POLYGONS
    return RLE_STRING if isinstance(segmentation["counts"], str) else RLE_COUNTS


def _by_image(image: np.ndarray, images: int) -> Ragged:
    """Annotation rows grouped by image; a stable sort keeps each image's in the file's order."""
    return Ragged(np.argsort(image, kind="stable"), _offsets(np.bincount(image, minlength=images)))
