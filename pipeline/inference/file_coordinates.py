"""One image's merged predictions, from the network input's geometry back to the file's (resize and letterbox
undone): per-pixel maps are resampled, boxes mapped and clipped.

`to_original` is the Sample's (sx, sy, ox, oy): input = file * s + o, per axis.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

Size = tuple[int, int]


def map_to_file(prediction: Tensor, to_original: Tensor, size: Size) -> Tensor:
    """[C, h, w] at the input's geometry -> [C, H, W] over the file's pixels (bilinear, pixel centres)."""
    height, width = size
    sx, sy, ox, oy = (float(v) for v in to_original)
    in_h, in_w = prediction.shape[-2:]
    # Each file pixel centre, in input pixels, then in grid_sample's [-1, 1] (align_corners=False).
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * sx + ox) / in_w * 2 - 1
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * sy + oy) / in_h * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(prediction.device)
    return F.grid_sample(prediction[None].float(), grid[None], mode="bilinear", padding_mode="border",
                         align_corners=False)[0]


def boxes_to_file(boxes: Tensor, to_original: Tensor, size: Size) -> Tensor:
    """[K, 4] xyxy input pixels -> float64 pixels of the file, clipped to it (as eval's COCO results and
    predict's both write them)."""
    sx, sy, ox, oy = (float(v) for v in to_original)
    offset = torch.tensor([ox, oy, ox, oy], dtype=torch.float64, device=boxes.device)
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64, device=boxes.device)
    return clip_boxes_to_image((boxes.double() - offset) / scale, size)


def to_file(kind: str, prediction: Any, to_original: Tensor, size: Size) -> Any:
    """One image's soft prediction (kinds.py forms, batch dimension removed) in the file's coordinates:
    probabilities [C] as they are; probability maps and images resampled; boxes mapped."""
    if kind == "classification":
        return prediction
    if kind == "detection":
        return {**prediction, "boxes": boxes_to_file(prediction["boxes"], to_original, size)}
    return map_to_file(prediction, to_original, size)
