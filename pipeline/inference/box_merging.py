"""One image's detections from several predictions of it (TTA views, ensemble members, overlapping tiles).

"wbf": weighted box fusion (Solovyev et al. 2021, the `ensemble_boxes` package): boxes of one class that
overlap are averaged, weighted by score, and a box found by fewer of the predictions has its score lowered
in proportion; it usually beats NMS for TTA and ensembles. "nms": class-aware NMS over all boxes.
"""
from __future__ import annotations

import warnings

import torch
from ensemble_boxes import weighted_boxes_fusion
from torch import Tensor
from torchvision.ops import batched_nms

METHODS = ("wbf", "nms")


def merge_boxes(predictions: list[dict[str, Tensor]], method: str, iou: float,
                max_detections: int) -> dict[str, Tensor]:
    """`predictions`: {"boxes" [K,4] xyxy px, "scores" [K], "labels" [K]} each, in the same coordinates."""
    boxes = torch.cat([p["boxes"] for p in predictions]).float()
    scores = torch.cat([p["scores"] for p in predictions]).float()
    labels = torch.cat([p["labels"] for p in predictions]).long()
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou)[:max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if method != "wbf":
        raise ValueError(f"box merge: expected one of {METHODS}, got {method!r}")
    return _fused(predictions, iou, max_detections, boxes.device)


def _fused(predictions: list[dict[str, Tensor]], iou: float, max_detections: int,
           device: torch.device) -> dict[str, Tensor]:
    # ensemble_boxes wants coordinates in [0, 1]: one scale for both axes keeps every IoU as it was.
    scale = max(1.0, max((float(p["boxes"].max()) for p in predictions if len(p["boxes"])), default=1.0))
    with warnings.catch_warnings():  # it warns for every zero-area box it skips
        warnings.simplefilter("ignore")
        boxes, scores, labels = weighted_boxes_fusion(
            [(p["boxes"].detach().double().cpu() / scale).numpy() for p in predictions],
            [p["scores"].detach().double().cpu().numpy() for p in predictions],
            [p["labels"].detach().cpu().numpy() for p in predictions], iou_thr=iou, skip_box_thr=0.0)
    order = torch.as_tensor(scores).argsort(descending=True)[:max_detections]
    return {"boxes": (torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)[order] * scale).to(device),
            "scores": torch.as_tensor(scores, dtype=torch.float32)[order].to(device),
            "labels": torch.as_tensor(labels).long()[order].to(device)}
