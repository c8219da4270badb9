"""Per head kind: the form of a prediction that several views can be merged in, and how it moves.

TTA, ensembles and tiling all make several predictions of one image and merge them. Each needs, per head kind:
- `soft`: a batch's raw outputs -> the mergeable form (probabilities, per-pixel probabilities, boxes, images);
- `unflip`/`resize`: bring a view's prediction back to the input it was derived from;
- `merge`: one prediction from several of the same input (averaged probabilities; boxes fused);
- `final`: what `head.decode` returns (so metrics and writers take it unchanged).
A new head kind is one `KindOps` entry in KINDS.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.inference.box_merging import merge_boxes

Size = tuple[int, int]  # (height, width)
Detections = list[dict[str, Tensor]]


@dataclass(frozen=True)
class KindOps:
    soft: Callable[[Any, Any], Any]                      # (head, raw outputs) -> mergeable batch prediction
    unflip: Callable[[Any, bool, bool, Size], Any]       # (prediction, hflip, vflip, size it was made at)
    resize: Callable[[Any, Size, Size], Any]             # (prediction, size it was made at, target size)
    merge: Callable[[list[Any], Any, str], Any]          # (views, head, box merge method)
    final: Callable[[Any], Any]                          # -> head.decode's format


# ---- dense maps: [B, C, H, W] probabilities or images ---------------------------------------------------


def _unflip_map(prediction: Tensor, hflip: bool, vflip: bool, size: Size) -> Tensor:
    dims = [d for d, flipped in ((-1, hflip), (-2, vflip)) if flipped]
    return prediction.flip(dims) if dims else prediction


def _resize_map(prediction: Tensor, size: Size, target: Size) -> Tensor:
    if tuple(size) == tuple(target):
        return prediction
    return F.interpolate(prediction, size=target, mode="bilinear", align_corners=False)


def _mean(views: list[Tensor], head: Any, method: str) -> Tensor:
    return views[0] if len(views) == 1 else torch.stack(views).mean(dim=0)


def _identity(prediction: Any, *args: Any) -> Any:
    return prediction


# ---- detections: per image {"boxes" [K,4] xyxy, "scores" [K], "labels" [K]} ------------------------------


def _unflip_boxes(prediction: Detections, hflip: bool, vflip: bool, size: Size) -> Detections:
    height, width = size
    flipped = []
    for image in prediction:
        x1, y1, x2, y2 = image["boxes"].unbind(-1)
        if hflip:
            x1, x2 = width - x2, width - x1
        if vflip:
            y1, y2 = height - y2, height - y1
        flipped.append({**image, "boxes": torch.stack([x1, y1, x2, y2], dim=-1)})
    return flipped


def _resize_boxes(prediction: Detections, size: Size, target: Size) -> Detections:
    if tuple(size) == tuple(target):
        return prediction
    scale = torch.tensor([target[1] / size[1], target[0] / size[0]] * 2)
    return [{**image, "boxes": image["boxes"] * scale.to(image["boxes"])} for image in prediction]


def _merge_detections(views: list[Detections], head: Any, method: str) -> Detections:
    if len(views) == 1:
        return views[0]
    options = head.options
    return [merge_boxes([view[i] for view in views], method, options.nms_iou, options.max_detections)
            for i in range(len(views[0]))]


def _decoded(head: Any, raw: Any) -> Any:
    return head.decode(raw)


def _segmentation_probabilities(head: Any, raw: Tensor) -> Tensor:
    return raw.float().softmax(dim=1)


def _classification_probabilities(head: Any, raw: Any) -> Tensor:
    return head.decode(raw).float()


KINDS: dict[str, KindOps] = {
    "classification": KindOps(_classification_probabilities, _identity, _identity, _mean, _identity),
    "segmentation": KindOps(_segmentation_probabilities, _unflip_map, _resize_map, _mean,
                            lambda probabilities: probabilities.argmax(dim=1)),
    "detection": KindOps(_decoded, _unflip_boxes, _resize_boxes, _merge_detections, _identity),
    "reconstruction": KindOps(lambda head, raw: head.decode(raw).float(), _unflip_map, _resize_map, _mean,
                              _identity),
}


def ops_for(head: Any) -> KindOps:
    try:
        return KINDS[head.kind]
    except KeyError:
        raise ValueError(f"head kind {head.kind!r}: no test-time merging known; expected one of "
                         f"{sorted(KINDS)} (pipeline/inference/kinds.py)") from None
