"""`predict`'s outputs: each image's files as soon as it is predicted, the run-level JSON at the end.

Under `out` (`name` is the input's unique name, pipeline/inference/sources.py; it may hold subfolders):
- predictions.json: {"class_names", "images": [{"id", "file", "name", "height", "width", "tasks": {task: ...}}]};
  classification: "top_k" [{"class", "index", "score"}] by score; segmentation: "mask" (its file) and "pixels"
  per class present; detection: "count" and "results_file"; reconstruction: "image" (its file).
- masks/<task>/<name>.png: always a folder per task, one segmentation task or several, so a second head added
  later moves nothing. An indexed (mode P) PNG of the image's size: the pixel value is the class index
  (0 background, k = class_names[k - 1]), shown in check-data's class colours; PIL (`np.array(Image.open(p))`)
  and `datasets/image_io.read_label_image` (the `masks` dataset format) read back the indices. (OpenCV does not:
  it expands a palette to its colours.)
- detections.json (one detection task) or detections_<task>.json: COCO results, rounded as `eval` writes them
  (pipeline/engine/validation.py: coco_results); images.json, the COCO "images" and "categories" of the run,
  makes them a COCO set (`COCO("images.json").loadRes("detections.json")`). It has no "annotations" on
  purpose: an empty list would read as ground truth saying "no objects".
- reconstructions/<task>/<name>.png: 8-bit, RGB (grey for 1- and 2-channel images, the first three channels of
  more).
- overlays/<name>.png: the image with masks, boxes and classification results drawn as check-data draws them.

Memory stays flat over any number of images: JSON lists are streamed to `<file>.partial` and moved into place
at close, so a run that is interrupted leaves no half-written JSON (nor half-written PNG: each is moved into
place the same way).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from datasets.paths import is_inside
from pipeline.config.typed import DataCheckError
from pipeline.data_check.drawing import (BOX_WIDTH, MASK_ALPHA, MIN_TILE_PIXELS, as_rgb_uint8, caption, class_colour,
                                         class_name, enlarged)
from pipeline.inference.predictions import ImagePrediction, TaskPrediction

logger = logging.getLogger(__name__)

KINDS = ("classification", "segmentation", "detection", "reconstruction")
# Palette of the mask PNGs: index 0 (background) black, index k in class k - 1's colour, as check-data shows it.
MASK_PALETTE = [0, 0, 0] + [value for k in range(1, 256) for value in class_colour(k - 1)]
OVERLAY_COMPRESSION = 1  # overlays are for looking at: a fast PNG level (a few % larger) keeps large images cheap


@dataclass
class TaskCount:
    kind: str
    images: int = 0       # images this task predicted
    detections: int = 0   # boxes written (detection tasks)


@dataclass
class PredictSummary:
    out: Path
    images: int
    tasks: dict[str, TaskCount]
    files: list[Path]       # run-level files: predictions.json, detections*.json, images.json
    folders: list[Path]     # where the per-image files went: masks/<task>, reconstructions/<task>, overlays
    # (the per-image files themselves are not listed: over thousands of images the list would be what grows)


class PredictionWriter:
    """Writes what `predict` found: `add` once per image, in order, then `close` (or use it as a context manager:
    an exception discards the unfinished JSON files instead of writing them)."""

    def __init__(self, out: Path, class_names: list[str], category_ids: list[int], top_k: int = 5,
                 coco_images: Path | None = None, overlays: bool = True) -> None:
        if len(category_ids) != len(class_names):
            raise ValueError(f"category_ids: expected one per class name ({len(class_names)}), got {len(category_ids)}")
        if top_k < 1:
            raise ValueError(f"top_k: expected at least 1, got {top_k}")
        self.out = Path(out)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.top_k = top_k
        self.overlays = overlays
        self.ids = _CocoImageIds(Path(coco_images)) if coco_images is not None else None
        self.out.mkdir(parents=True, exist_ok=True)
        self.predictions = _JsonStream(self.out / "predictions.json",
                                       f'{{"class_names": {json.dumps(self.class_names)}, "images": [', "]}")
        self.kinds: dict[str, str] | None = None   # task -> kind, fixed by the first image
        self.counts: dict[str, TaskCount] = {}
        self.detections: dict[str, _JsonStream] = {}
        self.coco_images: _JsonStream | None = None
        self.folders: list[Path] = []
        self.pending: list[tuple[_JsonStream, dict]] = []
        self.added = 0
        self.summary: PredictSummary | None = None

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.abort()

    def add(self, prediction: ImagePrediction) -> None:
        """Write this image's files now; keep nothing of it in memory but its place in the run-level JSON. An image
        that raises leaves no trace in the JSON files (nor takes an id), so a caller may skip it and go on."""
        if self.summary is not None:
            raise RuntimeError("PredictionWriter.add: the writer is closed")
        source = prediction.source
        if not is_inside(source.name):
            raise ValueError(f"{source.path}: output name {source.name!r} leads out of the output folder {self.out}")
        self._fix_tasks(prediction)
        height, width = (int(v) for v in prediction.size)
        image_id, file_name = self._image_id(prediction)
        record = {"id": image_id, "file": str(source.path), "name": source.name, "height": height, "width": width,
                  "tasks": {}}
        self.pending = []   # this image's detections: streamed once all its files are written
        for task, result in prediction.tasks.items():
            record["tasks"][task] = WRITERS[result.kind](self, task, result, prediction, image_id)
        if self.overlays:
            self._save(overlay(prediction, self.class_names), f"overlays/{source.name}.png",
                       compress_level=OVERLAY_COMPRESSION)
        for stream, result in self.pending:
            stream.add(result)
        for task, result in prediction.tasks.items():
            self.counts[task].images += 1
            self.counts[task].detections += record["tasks"][task].get("count", 0)
        if self.coco_images is not None:
            self.coco_images.add({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if self.ids is not None:
            self.ids.used[image_id] = Path(source.path)
        self.predictions.add(record)
        self.added += 1

    def close(self) -> PredictSummary:
        """Move the run-level JSON files into place; the summary of what was written (again on a second call)."""
        if self.summary is not None:
            return self.summary
        streams = [self.predictions, *self.detections.values(), *([self.coco_images] if self.coco_images else [])]
        for stream in streams:
            stream.close()
        self.summary = PredictSummary(out=self.out, images=self.added, tasks=self.counts,
                                      files=[stream.path for stream in streams], folders=self.folders)
        return self.summary

    def abort(self) -> None:
        """Remove the unfinished run-level JSON (the per-image files already written stay)."""
        for stream in [self.predictions, *self.detections.values(), *([self.coco_images] if self.coco_images else [])]:
            stream.discard()

    # -- the run's tasks and image ids

    def _fix_tasks(self, prediction: ImagePrediction) -> None:
        kinds = {task: result.kind for task, result in prediction.tasks.items()}
        if self.kinds is not None:
            if kinds != self.kinds:
                raise ValueError(f"{prediction.source.path}: tasks {kinds}; expected those of the first image, "
                                 f"{self.kinds}")
            return
        for task, kind in kinds.items():
            if kind not in KINDS:
                raise ValueError(f"task {task!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
            if not task or any(c in task for c in "/\\") or task in (".", ".."):
                raise ValueError(f"task {task!r}: expected a plain name (it names output folders)")
        self.kinds = kinds
        self.counts = {task: TaskCount(kind) for task, kind in kinds.items()}
        detection_tasks = [task for task, kind in kinds.items() if kind == "detection"]
        for task in detection_tasks:
            name = "detections.json" if len(detection_tasks) == 1 else f"detections_{task}.json"
            self.detections[task] = _JsonStream(self.out / name, "[", "]")
        if detection_tasks:
            categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names)]
            self.coco_images = _JsonStream(self.out / "images.json",
                                           f'{{"categories": {json.dumps(categories)}, "images": [', "]}")
        folders = {"segmentation": "masks/{}", "reconstruction": "reconstructions/{}"}
        self.folders = [self.out / folders[kind].format(task) for task, kind in kinds.items() if kind in folders]
        self.folders += [self.out / "overlays"] if self.overlays else []

    def _image_id(self, prediction: ImagePrediction) -> tuple[int, str]:
        """(COCO image id, file_name for images.json): the annotation file's, or 1..N in input order."""
        path = prediction.source.path
        if self.ids is None:
            return self.added + 1, Path(path).as_posix()
        entry = self.ids.entry_for(path)
        declared = (entry.get("height"), entry.get("width"))
        if declared != tuple(prediction.size) and None not in declared:
            logger.warning("%s: %s x %s pixels, but %s gives image id %s as %s x %s: boxes are in the file's pixels",
                           path, *prediction.size, self.ids.path, entry["id"], *declared)
        return entry["id"], entry["file_name"]

    # -- per-image files

    def _classification(self, task: str, result: TaskPrediction, prediction: ImagePrediction, image_id: int) -> dict:
        probabilities = np.asarray(result.probabilities, dtype=np.float64).reshape(-1)
        if self.class_names and probabilities.size != len(self.class_names):
            raise ValueError(f"{prediction.source.path}: task {task!r}: {probabilities.size} probabilities; "
                             f"expected one per class ({len(self.class_names)})")
        order = np.argsort(-probabilities, kind="stable")[:self.top_k]
        return {"top_k": [{"class": class_name(self.class_names, int(i)), "index": int(i),
                           "score": round(float(probabilities[i]), 5)} for i in order]}

    def _segmentation(self, task: str, result: TaskPrediction, prediction: ImagePrediction, image_id: int) -> dict:
        mask = np.asarray(result.mask)
        where = f"{prediction.source.path}: task {task!r}"
        if mask.shape != tuple(prediction.size):
            raise ValueError(f"{where}: mask of shape {mask.shape}; expected the image's size {tuple(prediction.size)}")
        highest = min(len(self.class_names), 255)  # 255: what an 8-bit PNG holds
        if mask.size and (mask.min() < 0 or mask.max() > highest):
            raise ValueError(f"{where}: mask values {mask.min()}..{mask.max()}; expected class indices 0..{highest}")
        counts = np.bincount(mask.ravel().astype(np.int64, copy=False), minlength=1)
        picture = Image.fromarray(mask.astype(np.uint8))
        picture.putpalette(MASK_PALETTE)  # "L" -> "P": the indices stay the pixel values
        relative = f"masks/{task}/{prediction.source.name}.png"
        self._save(picture, relative)
        pixels = {class_name(self.class_names, k - 1): int(n) for k, n in enumerate(counts) if k and n}
        return {"mask": relative, "pixels": pixels}

    def _detection(self, task: str, result: TaskPrediction, prediction: ImagePrediction, image_id: int) -> dict:
        boxes, scores, labels = detections_of(result, prediction)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
            raise ValueError(f"{prediction.source.path}: task {task!r}: box labels {labels.min()}..{labels.max()}; "
                             f"expected class indices 0..{len(self.category_ids) - 1}")
        stream = self.detections[task]
        # As pipeline/engine/validation.py's coco_results: xywh rounded to 2 decimals, scores to 5.
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            self.pending.append((stream, {"image_id": image_id, "category_id": self.category_ids[label],
                                          "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                                          "score": round(score, 5)}))
        return {"count": len(labels), "results_file": stream.path.name}

    def _reconstruction(self, task: str, result: TaskPrediction, prediction: ImagePrediction, image_id: int) -> dict:
        image = np.asarray(result.image, dtype=np.float32)
        image = image[..., None] if image.ndim == 2 else image
        pixels = np.round(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] < 3 else np.ascontiguousarray(pixels[..., :3]))
        relative = f"reconstructions/{task}/{prediction.source.name}.png"
        self._save(picture, relative)
        return {"image": relative}

    def _save(self, picture: Image.Image, relative: str, **params: Any) -> None:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        picture.save(partial, format="PNG", **params)
        os.replace(partial, path)


WRITERS = {"classification": PredictionWriter._classification, "segmentation": PredictionWriter._segmentation,
           "detection": PredictionWriter._detection, "reconstruction": PredictionWriter._reconstruction}


def detections_of(result: TaskPrediction, prediction: ImagePrediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [K, 4] float64 xyxy clipped to the image, as coco_results clips them; scores [K]; labels [K] int64)."""
    boxes = np.asarray(result.boxes if result.boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(result.scores if result.scores is not None else [], dtype=np.float64).reshape(-1)
    labels = np.asarray(result.labels if result.labels is not None else [], dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{prediction.source.path}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} "
                         "labels; expected one of each per detection")
    height, width = prediction.size
    boxes = np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                      boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], axis=1)
    return boxes, scores, labels


def overlay(prediction: ImagePrediction, class_names: list[str]) -> Image.Image:
    """The image (8-bit RGB, small images enlarged by a whole factor as check-data does) with every mask blended
    in, every box and its "<class> <score>" in the class colour, and each classification's top class in a corner."""
    height, width = (int(v) for v in prediction.size)
    image = torch.from_numpy(np.ascontiguousarray(prediction.image)).permute(2, 0, 1)
    rgb = as_rgb_uint8(image.float() / 255 if image.dtype == torch.uint8 else image)
    if tuple(rgb.shape[1:]) != (height, width):  # masks and boxes are in the file's pixels: bring the image there
        rgb = torch.from_numpy(cv2.resize(np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()), (width, height)))
        rgb = rgb.permute(2, 0, 1)
    scale = max(1, math.ceil(MIN_TILE_PIXELS / max(height, width)))
    pixels = np.ascontiguousarray(enlarged(rgb, scale).permute(1, 2, 0).numpy())
    for result in prediction.tasks.values():
        if result.kind == "segmentation":
            blend_mask(pixels, np.asarray(result.mask), scale)
    picture = torch.from_numpy(pixels).permute(2, 0, 1)
    for result in prediction.tasks.values():
        if result.kind == "detection":
            boxes, scores, labels = detections_of(result, prediction)
            if len(boxes):
                texts = [f"{class_name(class_names, i)} {s:.2f}" for i, s in zip(labels.tolist(), scores.tolist())]
                picture = draw_bounding_boxes(picture, torch.from_numpy(boxes * scale), labels=texts,
                                              colors=[class_colour(i) for i in labels.tolist()], width=BOX_WIDTH,
                                              fill_labels=True, label_colors="white")
    lines = []
    for task, result in prediction.tasks.items():
        if result.kind == "classification" and np.size(result.probabilities):
            probabilities = np.asarray(result.probabilities).reshape(-1)
            top = int(np.argmax(probabilities))
            lines.append((f"{task}: {class_name(class_names, top)} {probabilities[top]:.2f}", class_colour(top)))
    if lines:  # one line in its class's colour; several in white, the colours would not say which is which
        picture = caption(picture, "\n".join(text for text, _ in lines), lines[0][1] if len(lines) == 1 else
                          (255, 255, 255))
    return Image.fromarray(picture.permute(1, 2, 0).contiguous().numpy())


def blend_mask(pixels: np.ndarray, mask: np.ndarray, scale: int) -> None:
    """Blend each class of `mask` into `pixels` ([H * scale, W * scale, 3] uint8, in place) in its colour, the
    background untouched: check-data's look (drawing.draw_mask), computed on the mask's pixels only. _draw_mask's
    torch.unique and torchvision's whole-image float blend take over a second on a 6 MP image; this a tenth."""
    mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1) if scale > 1 else mask
    where = mask > 0
    if not where.any():
        return
    classes = mask[where]
    palette = np.array([(0, 0, 0)] + [class_colour(k) for k in range(int(classes.max()))], np.float32)
    blended = pixels[where] * np.float32(1 - MASK_ALPHA) + palette[classes] * np.float32(MASK_ALPHA)
    pixels[where] = np.round(blended).astype(np.uint8)


class _JsonStream:
    """A JSON document whose one big list is written item by item to `<file>.partial` and moved into place by
    close(): the list never sits in memory, and the file is either whole or not there."""

    def __init__(self, path: Path, head: str, tail: str) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.tail = tail
        self.count = 0
        self.file = open(self.partial, "w", encoding="utf-8")
        self.file.write(head)

    def add(self, item: Any) -> None:
        self.file.write((",\n" if self.count else "\n") + json.dumps(item))
        self.count += 1

    def close(self) -> None:
        self.file.write("\n" + self.tail + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())  # the rename must not land before the data on a crash
        self.file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


@dataclass
class _CocoImageIds:
    """Image ids from a COCO annotation file. An input matches the entry whose file_name is the end of its path
    ("val/img_1.png" matches /data/coco/val/img_1.png; the longest such wins), else the one entry with its file
    name, when only one has it."""
    path: Path
    by_file_name: dict[str, list[tuple[tuple[str, ...], dict]]] = field(default_factory=dict)
    used: dict[Any, Path] = field(default_factory=dict)   # id -> the input that took it (set by the writer)

    def __post_init__(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataCheckError(f"{self.path}: cannot read the COCO annotation file ({error})") from error
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataCheckError(f'{self.path}: expected a COCO annotation file with an "images" list')
        for position, entry in enumerate(images):
            if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
                raise DataCheckError(f'{self.path}: images[{position}]: expected an entry with "id" and "file_name"')
            parts = PurePosixPath(entry["file_name"].replace("\\", "/")).parts
            if parts:
                self.by_file_name.setdefault(parts[-1], []).append((parts, entry))

    def entry_for(self, path: Path) -> dict:
        parts = PurePosixPath(Path(os.path.abspath(path)).as_posix()).parts
        candidates = self.by_file_name.get(parts[-1], [])
        ends = [(len(p), e) for p, e in candidates if len(p) <= len(parts) and parts[-len(p):] == p]
        if ends:
            longest = max(length for length, _ in ends)
            matches = [e for length, e in ends if length == longest]
        else:
            matches = [e for _, e in candidates]
        if len(matches) != 1:
            found = "no image entry" if not matches else \
                f"{len(matches)} image entries (ids {', '.join(str(e['id']) for e in matches)})"
            raise DataCheckError(f"{path}: {found} in {self.path} match this file; expected one whose file_name is "
                                 "the end of its path, or the only one with its file name")
        entry = matches[0]
        if self.used.get(entry["id"], Path(path)) != Path(path):
            raise DataCheckError(f"{path}: matches image id {entry['id']} in {self.path}, as {self.used[entry['id']]} "
                                 "did; expected one input per image entry")
        return entry
