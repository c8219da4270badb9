"""The run report's sample predictions: validation images with their ground truth beside the model's prediction.

Drawn with check-data's tile kit (pipeline/data_check/drawing.py: class colours, masks, labelled boxes, captions)
instead of matplotlib: a grid of 20 matplotlib panels costs half a second to render, these tiles milliseconds, and
the report is written at the end of every training.
"""
from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

from datasets.sample import Batch
from pipeline.data_check.drawing import (BOX_WIDTH, GRID_PAD_VALUE, MIN_TILE_PIXELS, as_rgb_uint8, caption,
                                         class_colour, class_name, draw_mask, enlarged)
from pipeline.model import MultiTaskModel

MAX_IMAGES = 4
MAX_TILE_PIXELS = 256   # larger inputs are shrunk to this (the page stays a few hundred KB); smaller ones enlarged
BOX_SCORE = 0.25        # predicted boxes drawn: scored at least this (decode keeps far weaker ones for mAP)
MAX_BOXES = 20          # per tile, most confident first
CAPTION_COLOUR = (255, 255, 255)
PADDING = 4


@torch.no_grad()
def predict(model: MultiTaskModel, images: Tensor) -> dict[str, Any]:
    """task -> that head's decode() of `images`, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        outputs = model(images.to(next(model.parameters()).device))
        return {task: head.decode(outputs[task]) for task, head in model.heads.items()}
    finally:
        model.train(was_training)


def columns(model: MultiTaskModel) -> list[str]:
    """What each row shows, left to right: the truth, the prediction (the first segmentation task's mask, every
    detection task's boxes, every classification task's class), each further segmentation task's mask, and each
    reconstruction."""
    kinds = {task: head.kind for task, head in model.heads.items()}
    masks = [task for task, kind in kinds.items() if kind == "segmentation"]
    return (["truth", "prediction"] + [f"{task}: prediction" for task in masks[1:]]
            + [f"{task}: output" for task, kind in kinds.items() if kind == "reconstruction"])


def samples_png(model: MultiTaskModel, batch: Batch, class_names: list[str], max_images: int = MAX_IMAGES) -> bytes:
    """One row per validation image (up to `max_images`), as described by `columns`; PNG bytes."""
    images = batch.image[:max_images].detach().float().cpu()
    predictions = predict(model, images)
    kinds = {task: head.kind for task, head in model.heads.items()}
    masks = [task for task, kind in kinds.items() if kind == "segmentation"]
    scale = tile_scale(max(images.shape[-2:]))
    tiles = []
    for i, image in enumerate(images):
        picture = _scaled(as_rgb_uint8(image), scale)
        tiles.append(_truth(picture, batch, i, model, class_names, scale, with_mask=bool(masks)))
        predicted = picture
        if masks:
            predicted = _mask(predicted, predictions[masks[0]][i])
        for task, kind in kinds.items():
            if kind == "detection":
                predicted = _boxes(predicted, _confident(predictions[task][i]), class_names, scale)
        classes = [_top_class(predictions[task][i], class_names) for task, kind in kinds.items()
                   if kind == "classification"]
        tiles.append(caption(predicted, "prediction" + (": " + " / ".join(classes) if classes else ""),
                             CAPTION_COLOUR))
        for task in masks[1:]:
            tiles.append(caption(_mask(picture, predictions[task][i]), f"{task}: prediction", CAPTION_COLOUR))
        for task, kind in kinds.items():
            if kind == "reconstruction":
                output = as_rgb_uint8(predictions[task][i].detach().float().cpu())
                tiles.append(caption(_fit(output, picture.shape[-2:]), f"{task}: output", CAPTION_COLOUR))
    grid = make_grid(tiles, nrow=len(tiles) // len(images), padding=PADDING, pad_value=GRID_PAD_VALUE)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def tile_scale(side: int) -> float:
    """Input pixels -> tile pixels: a whole factor up to MIN_TILE_PIXELS (pixels stay pixels, labels legible),
    down to MAX_TILE_PIXELS for large inputs."""
    if side > MAX_TILE_PIXELS:
        return MAX_TILE_PIXELS / side
    return float(max(1, -(-MIN_TILE_PIXELS // side)))


def _scaled(picture: Tensor, scale: float) -> Tensor:
    if scale >= 1:
        return enlarged(picture, int(scale))
    shrunk = F.interpolate(picture[None].float(), scale_factor=scale, mode="area")[0]
    return shrunk.round().clamp(0, 255).to(torch.uint8)


def _truth(picture: Tensor, batch: Batch, i: int, model: MultiTaskModel, class_names: list[str], scale: float,
           with_mask: bool) -> Tensor:
    if with_mask and bool(batch.has_mask[i]):
        picture = _mask(picture, batch.mask[i])
    if len(batch.has_boxes) and bool(batch.has_boxes[i]):
        labels = batch.box_labels[i].detach().cpu()
        picture = _boxes(picture, {"boxes": batch.boxes[i].detach().cpu(), "labels": labels}, class_names, scale)
    return caption(picture, "truth" + _true_classes(batch, i, model, class_names), CAPTION_COLOUR)


def _true_classes(batch: Batch, i: int, model: MultiTaskModel, class_names: list[str]) -> str:
    multi = any(getattr(getattr(head, "options", None), "multi_label", False) for head in model.heads.values())
    if multi and bool(batch.has_multi_label[i]):
        present = batch.multi_label[i].detach().cpu().nonzero().flatten().tolist()
        return ": " + (", ".join(class_name(class_names, c) for c in present) or "(none)")
    if bool(batch.has_label[i]):
        return ": " + class_name(class_names, int(batch.label[i]))
    return ""


def _top_class(probabilities: Tensor, class_names: list[str]) -> str:
    probability, label = probabilities.detach().float().cpu().max(dim=0)
    return f"{class_name(class_names, int(label))} {float(probability):.2f}"


def _confident(detections: dict[str, Tensor]) -> dict[str, Tensor]:
    scores = detections["scores"].detach().cpu()
    order = scores.argsort(descending=True)[:MAX_BOXES]
    order = order[scores[order] >= BOX_SCORE]
    return {key: detections[key].detach().cpu()[order] for key in ("boxes", "scores", "labels")}


def _boxes(picture: Tensor, found: dict[str, Tensor], class_names: list[str], scale: float) -> Tensor:
    if not len(found["boxes"]):
        return picture
    labels = found["labels"].tolist()
    scores = found["scores"].tolist() if "scores" in found else None
    texts = [class_name(class_names, label) + (f" {scores[k]:.2f}" if scores else "") for k, label in enumerate(labels)]
    return draw_bounding_boxes(picture, found["boxes"].float() * scale, labels=texts,
                               colors=[class_colour(label) for label in labels], width=BOX_WIDTH, fill_labels=True,
                               label_colors="white")


def _mask(picture: Tensor, mask: Tensor) -> Tensor:
    """A class map (0 background, IGNORE_INDEX grey) over the picture, brought to its size first (the tile's
    scale; a head may also predict at another resolution)."""
    mask = mask.detach().cpu()
    if tuple(mask.shape) != tuple(picture.shape[-2:]):
        mask = F.interpolate(mask[None, None].float(), size=picture.shape[-2:], mode="nearest")[0, 0].long()
    return draw_mask(picture, mask, 1)


def _fit(tile: Tensor, size: torch.Size) -> Tensor:
    """An image brought to the tile size: enlarged pixel for pixel, shrunk by averaging."""
    if tuple(tile.shape[-2:]) == tuple(size):
        return tile
    mode = "nearest" if tile.shape[-1] <= size[-1] else "area"
    return F.interpolate(tile[None].float(), size=tuple(size), mode=mode)[0].round().clamp(0, 255).to(torch.uint8)
