"""From dense per-class box scores to final detections: threshold, top-k, class-aware NMS, cap."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image


@dataclass
class SelectionOptions:
    conf_threshold: float
    nms_iou: float
    max_detections: int
    pre_nms_top_k: int  # bounds NMS cost when an untrained head scores everything highly


def select_detections(boxes: Tensor, scores: Tensor, image_size: tuple[int, int],
                      options: SelectionOptions) -> dict[str, Tensor]:
    """One image: `boxes` [N, 4] xyxy px, `scores` [N, C] -> {"boxes" [K,4] clipped, "scores" [K], "labels" [K]}.

    Multi-label: a box may be kept under several classes, since NMS runs per class.
    """
    num_classes = scores.shape[1]
    flat = scores.flatten()
    top_scores, top = flat.topk(min(options.pre_nms_top_k, flat.numel()))
    confident = top_scores > options.conf_threshold
    top_scores, top = top_scores[confident], top[confident]
    labels = top % num_classes
    candidates = clip_boxes_to_image(boxes[top // num_classes], image_size)
    keep = batched_nms(candidates, top_scores, labels, options.nms_iou)[: options.max_detections]
    return {"boxes": candidates[keep], "scores": top_scores[keep], "labels": labels[keep]}
