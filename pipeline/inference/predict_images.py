"""Image files -> ImagePredictions in the files' own coordinates, batched, with a progress bar.

Each file is read with the checkpoint's image policy and shaped by the validation transform (resize or
letterbox), exactly as evaluation reads it. With `tile`, each image is cut into overlapping windows of
`tile` file pixels instead (large aerial or microscopy images), each window predicted as a whole image would
be, and the windows stitched: probability maps averaged where they overlap, boxes merged, image-level
probabilities averaged.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.collate import collate
from datasets.image_io import ImagePolicy, read_image
from datasets.record import RawRecord
from datasets.transforms import build_transform
from pipeline.config.typed import DataCheckError
from pipeline.inference.box_merging import merge_boxes
from pipeline.inference.file_coordinates import to_file
from pipeline.inference.predictions import ImagePrediction, InputImage, TaskPrediction
from pipeline.inference.predictor import Predictor


@dataclass
class PredictOptions:
    image_size: int                 # the checkpoint's data.image_size
    resize: str                     # its data.resize: "stretch" | "letterbox"
    policy: ImagePolicy             # its image policy
    batch_size: int = 8
    workers: int = 0
    tile: int = 0                   # window side in file pixels; 0: whole images
    tile_overlap: float = 0.25      # fraction of the window shared with the next one
    conf: float = 0.0               # detections scoring below this are left out


class _Files(Dataset):
    """Position -> (the decoded file as float [H, W, C] in [0, 1], its validation Sample or None when tiling)."""

    def __init__(self, inputs: list[InputImage], options: PredictOptions) -> None:
        self.inputs, self.options = inputs, options
        self.transform = build_transform(options.image_size, train=False, resize=options.resize,
                                         channels=options.policy.channels)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, position: int) -> tuple[np.ndarray, Any]:
        try:
            image = read_image(self.inputs[position].path, self.options.policy)
        except (OSError, ValueError) as error:
            raise DataCheckError(f"{self.inputs[position].path}: cannot be read ({error})") from error
        sample = None if self.options.tile else self.transform(RawRecord(image=image, image_id=position))
        return as_unit(image), sample


def model_inputs(inputs: list[InputImage], options: PredictOptions) -> Tensor:
    """The files as the model sees them: [N, C, H, W] in [0, 1] at the checkpoint's input size (explain)."""
    files = _Files(inputs, dataclasses.replace(options, tile=0))
    return torch.stack([files[i][1].image for i in range(len(files))])


def as_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)


def _pairs(items: list[tuple[np.ndarray, Any]]) -> tuple[list[np.ndarray], Any]:
    images = [image for image, _ in items]
    samples = [sample for _, sample in items]
    return images, (collate(samples) if samples[0] is not None else None)


def predict_images(predictor: Predictor, inputs: list[InputImage], options: PredictOptions,
                   device: torch.device, progress: bool = True) -> Iterator[ImagePrediction]:
    files = _Files(inputs, options)
    loader = DataLoader(files, batch_size=1 if options.tile else options.batch_size, shuffle=False,
                        num_workers=options.workers, collate_fn=_pairs)
    position = 0
    with tqdm(total=len(inputs), desc="predict", unit="image", disable=not progress) as bar:
        for images, batch in loader:
            if batch is None:
                predictions = [_tiled(predictor, files.transform, images[0], options, device)]
            else:
                predictions = _whole(predictor, batch, options, device)
            for image, tasks in zip(images, predictions):
                yield ImagePrediction(inputs[position], (image.shape[0], image.shape[1]), image, tasks)
                position += 1
                bar.update(1)


def _whole(predictor: Predictor, batch: Any, options: PredictOptions,
           device: torch.device) -> list[dict[str, TaskPrediction]]:
    soft = predictor.soft(batch.image.to(device))
    results = []
    for i, size in enumerate(batch.orig_size.tolist()):
        results.append({task: _finish(head.kind, to_file(head.kind, soft[task][i], batch.to_original[i],
                                                         tuple(size)), options.conf)
                        for task, head in predictor.heads.items()})
    return results


def _finish(kind: str, prediction: Any, conf: float) -> TaskPrediction:
    if kind == "classification":
        return TaskPrediction(kind, probabilities=prediction.float().cpu().numpy())
    if kind == "segmentation":
        return TaskPrediction(kind, mask=prediction.argmax(dim=0).cpu().numpy())
    if kind == "detection":
        keep = prediction["scores"] >= conf
        return TaskPrediction(kind, boxes=prediction["boxes"][keep].cpu().numpy(),
                              scores=prediction["scores"][keep].cpu().numpy(),
                              labels=prediction["labels"][keep].cpu().numpy())
    return TaskPrediction(kind, image=prediction.clamp(0, 1).permute(1, 2, 0).cpu().numpy())


# ---- tiling ---------------------------------------------------------------------------------------------


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window offsets along one side: every pixel covered, neighbours sharing about `overlap` of a window,
    the last window flush with the end. One window when the side is no longer than the tile."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    return sorted(set(range(0, length - tile, step)) | {length - tile})


def _tiled(predictor: Predictor, transform: Any, image: np.ndarray, options: PredictOptions,
           device: torch.device) -> dict[str, TaskPrediction]:
    height, width = image.shape[:2]
    windows = [(y, x) for y in window_starts(height, options.tile, options.tile_overlap)
               for x in window_starts(width, options.tile, options.tile_overlap)]
    stitched = {task: _Stitch(head, (height, width)) for task, head in predictor.heads.items()}
    for start in range(0, len(windows), options.batch_size):
        chunk = windows[start:start + options.batch_size]
        crops = [image[y:y + options.tile, x:x + options.tile] for y, x in chunk]
        batch = collate([transform(RawRecord(image=crop, image_id=0)) for crop in crops])
        soft = predictor.soft(batch.image.to(device))
        for i, ((y, x), crop) in enumerate(zip(chunk, crops)):
            for task, head in predictor.heads.items():
                part = to_file(head.kind, soft[task][i], batch.to_original[i], crop.shape[:2])
                stitched[task].add(part, y, x, crop.shape[:2])
    return {task: _finish(head.kind, stitched[task].result(predictor.box_merge, len(windows)), options.conf)
            for task, head in predictor.heads.items()}


class _Stitch:
    """One task's predictions of the windows of one image, gathered in the image's coordinates."""

    def __init__(self, head: Any, size: tuple[int, int]) -> None:
        self.head, self.size = head, size
        self.parts: list[Any] = []                   # classification probabilities; detections
        self.total: Tensor | None = None             # probability maps / images: sum over windows
        self.count = torch.zeros(size)

    def add(self, part: Any, y: int, x: int, part_size: tuple[int, int]) -> None:
        if self.head.kind == "classification":
            self.parts.append(part)
        elif self.head.kind == "detection":
            offset = torch.tensor([x, y, x, y], dtype=part["boxes"].dtype, device=part["boxes"].device)
            boxes = part["boxes"] + offset
            window = (x, y, x + part_size[1], y + part_size[0])
            self.parts.append({**part, "boxes": boxes, "cut": _cut_by_window(boxes, window, self.size)})
        else:
            part = part.cpu()
            if self.total is None:
                self.total = torch.zeros(part.shape[0], *self.size)
            h, w = part.shape[-2:]
            self.total[:, y:y + h, x:x + w] += part
            self.count[y:y + h, x:x + w] += 1

    def result(self, box_merge: str, windows: int) -> Any:
        if self.head.kind == "classification":
            return torch.stack(self.parts).mean(dim=0)
        if self.head.kind == "detection":
            parts = _without_fragments(self.parts)
            if len(parts) == 1:
                return parts[0]
            options = self.head.options
            return merge_boxes(parts, box_merge, options.nms_iou, options.max_detections * windows)
        return self.total / self.count.clamp(min=1)


def _cut_by_window(boxes: Tensor, window: tuple[int, int, int, int], size: tuple[int, int]) -> Tensor:
    """[K] bool: the box touches an edge of its window that lies inside the image, so the object may go on
    beyond what this window saw."""
    x1, y1, x2, y2 = window
    height, width = size
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for edge, inside, touches in ((x1, x1 > 0, boxes[:, 0] <= x1 + 1), (y1, y1 > 0, boxes[:, 1] <= y1 + 1),
                                  (x2, x2 < width, boxes[:, 2] >= x2 - 1), (y2, y2 < height, boxes[:, 3] >= y2 - 1)):
        if inside:
            cut |= touches
    return cut


def _without_fragments(parts: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Drop each box cut by its window's edge that is mostly (>= half its area) inside an uncut box of the same
    class from another window: that window saw the whole object. Objects larger than any window stay as
    fragments (merged as well as the box merge can)."""
    whole = [(i, p["boxes"][~p["cut"]], p["labels"][~p["cut"]]) for i, p in enumerate(parts)]
    kept = []
    for i, part in enumerate(parts):
        keep = torch.ones(len(part["boxes"]), dtype=torch.bool, device=part["boxes"].device)
        for k in torch.nonzero(part["cut"]).flatten().tolist():
            keep[k] = not any(_covered(part["boxes"][k], boxes[labels == part["labels"][k]])
                              for j, boxes, labels in whole if j != i)
        kept.append({name: part[name][keep] for name in ("boxes", "scores", "labels")})
    return kept


def _covered(box: Tensor, others: Tensor) -> bool:
    if not len(others):
        return False
    top_left = torch.maximum(box[:2], others[:, :2])
    bottom_right = torch.minimum(box[2:], others[:, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).clamp(min=1e-6).prod()
    return bool((overlap / area >= 0.5).any())
