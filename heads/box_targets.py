"""Ground-truth boxes of a batch in the flat form detection heads assign from."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from datasets.sample import Batch


@dataclass
class FlatBoxes:
    image: Tensor   # [P] batch index
    boxes: Tensor   # [P, 4] xyxy input px
    labels: Tensor  # [P] int64


def flatten_ground_truth(batch: Batch, device: torch.device) -> FlatBoxes:
    """Boxes of all images with has_boxes stacked, with their batch index; boxes without area dropped
    (they have no shape to match and no log- or sqrt-size to learn)."""
    image = [torch.zeros(0, dtype=torch.long, device=device)]
    boxes = [torch.zeros(0, 4, device=device)]
    labels = [torch.zeros(0, dtype=torch.long, device=device)]
    for i, (b, l) in enumerate(zip(batch.boxes, batch.box_labels)):
        if not bool(batch.has_boxes[i]):
            continue
        b = b.to(device).float().reshape(-1, 4)
        valid = (b[:, 2:] > b[:, :2]).all(dim=1)
        image.append(torch.full((int(valid.sum()),), i, dtype=torch.long, device=device))
        boxes.append(b[valid])
        labels.append(l.to(device).long().reshape(-1)[valid])
    return FlatBoxes(torch.cat(image), torch.cat(boxes), torch.cat(labels))


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes (broadcasting [..., 4] with [..., 4]), not all pairs like box_iou."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(dim=-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def cells_in_ignore_regions(batch: Batch, grid: tuple[int, int], stride_yx: tuple[float, float],
                            device: torch.device) -> Tensor:
    """[B, H, W] bool: grid cells whose centre lies inside one of their image's ignore regions (crowds,
    "difficult" objects, objects mostly cut off by augmentation). A detector neither learns "object" nor
    "background" there, as the official COCO evaluation neither rewards nor penalises detections there."""
    rows, cols = grid
    ys = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * stride_yx[0]
    xs = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * stride_yx[1]
    inside = torch.zeros(len(batch.ignore_boxes), rows, cols, dtype=torch.bool, device=device)
    for i, regions in enumerate(batch.ignore_boxes):
        for x1, y1, x2, y2 in regions.to(device).float().tolist():
            inside[i] |= ((ys >= y1) & (ys <= y2)).view(rows, 1) & ((xs >= x1) & (xs <= x2)).view(1, cols)
    return inside
