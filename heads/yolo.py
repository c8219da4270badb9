"""YOLOv3-style anchor-based detection head over several backbone levels.

A light top-down FPN feeds one 1x1 prediction conv per level; each cell and
anchor predicts (tx, ty, tw, th, objectness, C class logits). Each ground
truth box goes to the single anchor, over all levels, whose shape fits it
best, at the cell holding its centre.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import (
    batched_nms, box_convert, box_iou, clip_boxes_to_image, generalized_box_iou_loss,
)

from datasets.sample import Batch
from heads.base import Head, zero_loss
from heads.detection_metric import CocoDetectionMetric

# exp(tw) is capped so an untrained head cannot overflow: a box may grow to
# ~60x its anchor, far beyond any object the anchors are meant for.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)
OBJECTNESS_PRIOR = 0.01  # initial P(object) per prediction: keeps early obj loss small


def _default_anchors() -> list[list[list[float]]]:
    # Three [w, h] priors per level for ~10-90 px objects in ~128 px images.
    return [
        [[10, 10], [14, 20], [20, 14]],
        [[24, 24], [28, 40], [40, 28]],
        [[48, 48], [56, 80], [80, 56]],
    ]


@dataclass
class YoloOptions:
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    anchors: list[list[list[float]]] = field(default_factory=_default_anchors)  # per level, [w, h] px
    neck_channels: int = 64
    conf_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100
    pre_nms_top_k: int = 1000  # bounds NMS cost when an untrained head scores everything highly
    # Objectness BCE is weighted obj_weight on assigned cells and noobj_weight
    # elsewhere (YOLOv1's lambda_noobj); both are reported as the one "obj" term.
    obj_weight: float = 1.0
    noobj_weight: float = 1.0
    ignore_iou: float = 0.5  # unassigned predictions overlapping a GT above this get no obj loss (> 1 disables)
    box_weight: float = 5.0
    cls_weight: float = 1.0
    box_loss: str = "giou"  # "giou" on decoded boxes | "mse" on (offset x, offset y, tw, th)


@dataclass
class YoloOutputs:
    levels: list[Tensor]         # per level [B, A, H, W, 5 + C] raw: tx, ty, tw, th, obj, class logits
    image_size: tuple[int, int]  # (height, width) of the network input, for clipping decoded boxes


@dataclass
class LevelTargets:
    """Ground truth assigned to one level: one row per matched box."""
    image: Tensor   # [P] batch index
    anchor: Tensor  # [P] anchor index within the level
    cell_y: Tensor  # [P]
    cell_x: Tensor  # [P]
    boxes: Tensor   # [P, 4] xyxy input pixels
    labels: Tensor  # [P] int64
    raw: Tensor     # [P, 4] (tx, ty, tw, th) that decode exactly to `boxes`


@dataclass
class _Positives:
    """Predictions at assigned cells with what decoding and the losses need, all levels stacked."""
    raw: Tensor      # [P, 5 + C]
    cells: Tensor    # [P, 2] (x, y)
    anchors: Tensor  # [P, 2] (w, h) px
    strides: Tensor  # [P, 1]
    boxes: Tensor    # [P, 4] GT xyxy px
    labels: Tensor   # [P]
    encoded: Tensor  # [P, 4] GT as (tx, ty, tw, th)


def _centre_offset(t: Tensor) -> Tensor:
    # YOLOv4/5 scaled sigmoid: the offset spans (-0.5, 1.5), so centres on a
    # cell edge are reachable without infinite logits.
    return 2.0 * t.sigmoid() - 0.5


def decode_boxes(raw: Tensor, cells: Tensor, anchors: Tensor, stride: Tensor | float) -> Tensor:
    """(tx, ty, tw, th) -> xyxy input pixels; all arguments broadcast together.

    `cells` holds (x, y) cell indices, `anchors` (w, h) priors in pixels.
    """
    centre = (_centre_offset(raw[..., :2]) + cells) * stride
    size = anchors * raw[..., 2:4].clamp(max=MAX_LOG_SCALE).exp()
    return box_convert(torch.cat([centre, size], dim=-1), "cxcywh", "xyxy")


def encode_boxes(boxes: Tensor, cells: Tensor, anchors: Tensor, stride: Tensor | float) -> Tensor:
    """Inverse of `decode_boxes`: xyxy pixels [P, 4] -> (tx, ty, tw, th) [P, 4]."""
    cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    offset = cxcywh[:, :2] / stride - cells
    probability = ((offset + 0.5) / 2.0).clamp(1e-6, 1 - 1e-6)
    return torch.cat([torch.logit(probability), torch.log(cxcywh[:, 2:] / anchors)], dim=1)


def _grid(height: int, width: int, device: torch.device) -> Tensor:
    """[H, W, 2] (x, y) cell indices."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).float()


def _centred(wh: Tensor) -> Tensor:
    """Boxes of the given sizes sharing one centre, so their IoU compares shapes only."""
    return torch.cat([-wh / 2, wh / 2], dim=1)


class _TopDownNeck(nn.Module):
    """1x1 laterals to a common width, coarse-to-fine upsample+add, 3x3 smoothing."""

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width), nn.LeakyReLU(0.1))
            for _ in channels
        )

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        merged: list[Tensor] = []
        coarser = None
        for lateral, smooth, x in reversed(list(zip(self.laterals, self.smooth, maps))):
            top = lateral(x)
            if coarser is not None:
                top = top + F.interpolate(coarser, size=top.shape[-2:], mode="nearest")
            coarser = top
            merged.append(smooth(top))
        return merged[::-1]


class YoloHead(Head):
    kind = "detection"
    Options = YoloOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: YoloOptions):
        super().__init__()
        if len(options.anchors) != len(options.strides):
            raise ValueError(
                f"YOLO options give {len(options.anchors)} anchor levels for {len(options.strides)} strides"
            )
        if options.box_loss not in ("giou", "mse"):
            raise ValueError(f"YOLO box_loss must be 'giou' or 'mse', got {options.box_loss!r}")
        self.options = options
        self.num_classes = num_classes
        self.feature_indices = [_index_of_stride(s, strides) for s in options.strides]
        self.strides = list(options.strides)
        self.anchors = [[list(map(float, wh)) for wh in level] for level in options.anchors]
        self.neck = _TopDownNeck([channels[i] for i in self.feature_indices], options.neck_channels)
        self.predictors = nn.ModuleList(
            nn.Conv2d(options.neck_channels, len(level) * (5 + num_classes), 1) for level in self.anchors
        )
        self._init_objectness_bias()

    def _init_objectness_bias(self) -> None:
        prior = math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))
        for predictor, level in zip(self.predictors, self.anchors):
            with torch.no_grad():
                predictor.bias.view(len(level), 5 + self.num_classes)[:, 4] = prior

    # ---- forward -----------------------------------------------------------

    def forward(self, features: list[Tensor], image: Tensor) -> YoloOutputs:
        pyramid = self.neck([features[i] for i in self.feature_indices])
        levels = [self._per_anchor(predictor(x)) for predictor, x in zip(self.predictors, pyramid)]
        return YoloOutputs(levels=levels, image_size=(image.shape[-2], image.shape[-1]))

    def _per_anchor(self, x: Tensor) -> Tensor:
        """[B, A*(5+C), H, W] -> [B, A, H, W, 5+C]."""
        b, _, h, w = x.shape
        return x.view(b, -1, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def _anchor_tensor(self, level: int, device: torch.device) -> Tensor:
        return torch.tensor(self.anchors[level], device=device)

    def decode_level_boxes(self, outputs: YoloOutputs, level: int) -> Tensor:
        """All boxes of one level, [B, A, H, W, 4] xyxy input pixels."""
        raw = outputs.levels[level]
        cells = _grid(raw.shape[2], raw.shape[3], raw.device)
        anchors = self._anchor_tensor(level, raw.device).view(-1, 1, 1, 2)
        return decode_boxes(raw, cells, anchors, self.strides[level])

    # ---- targets -----------------------------------------------------------

    def assign_targets(self, outputs: YoloOutputs, batch: Batch) -> list[LevelTargets]:
        """Match each GT box of images with has_boxes to its best-shaped anchor.

        Two boxes landing on one (cell, anchor) both keep their rows: the
        prediction is pulled towards both, as in the original YOLOv3.
        """
        device = outputs.levels[0].device
        image, boxes, labels = _flatten_ground_truth(batch, device)
        level_of, anchor_of, shapes = self._anchor_table(device)
        best = box_iou(_centred(boxes[:, 2:] - boxes[:, :2]), _centred(shapes)).argmax(dim=1)
        targets = []
        for level, raw in enumerate(outputs.levels):
            chosen = level_of[best] == level
            targets.append(self._level_targets(
                level, raw.shape[2:4], image[chosen], anchor_of[best[chosen]], boxes[chosen], labels[chosen]
            ))
        return targets

    def _anchor_table(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Every anchor of every level: its level, its index within the level and its [w, h]."""
        table = [(level, index, wh)
                 for level, priors in enumerate(self.anchors) for index, wh in enumerate(priors)]
        level_of, anchor_of, shapes = zip(*table)
        return (torch.tensor(level_of, device=device), torch.tensor(anchor_of, device=device),
                torch.tensor(shapes, device=device))

    def _level_targets(self, level: int, grid: tuple[int, int], image: Tensor, anchor: Tensor,
                       boxes: Tensor, labels: Tensor) -> LevelTargets:
        stride = self.strides[level]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        # Centres on or past the border belong to the edge cell.
        cell_x = (centre[:, 0] / stride).floor().long().clamp(0, grid[1] - 1)
        cell_y = (centre[:, 1] / stride).floor().long().clamp(0, grid[0] - 1)
        cells = torch.stack([cell_x, cell_y], dim=1).float()
        priors = self._anchor_tensor(level, boxes.device)[anchor]
        raw = encode_boxes(boxes, cells, priors, stride)
        return LevelTargets(image=image, anchor=anchor, cell_y=cell_y, cell_x=cell_x,
                            boxes=boxes, labels=labels, raw=raw)

    # ---- loss --------------------------------------------------------------

    def loss(self, outputs: YoloOutputs, batch: Batch) -> dict[str, Tensor]:
        has_boxes = batch.has_boxes.to(outputs.levels[0].device)
        zero = sum(zero_loss(level) for level in outputs.levels)
        if not bool(has_boxes.any()):
            return {"obj": zero, "box": zero, "cls": zero}
        targets = self.assign_targets(outputs, batch)
        obj = self._objectness_loss(outputs, targets, batch, has_boxes)
        positives = self._gather_positives(outputs, targets)
        if positives.raw.shape[0] == 0:
            return {"obj": obj, "box": zero, "cls": zero}
        box = self._box_loss(positives)
        one_hot = F.one_hot(positives.labels, self.num_classes).to(positives.raw.dtype)
        # Mean over positives and classes, so its scale does not grow with C.
        cls = F.binary_cross_entropy_with_logits(positives.raw[:, 5:], one_hot)
        return {"obj": obj, "box": self.options.box_weight * box, "cls": self.options.cls_weight * cls}

    def _objectness_loss(self, outputs: YoloOutputs, targets: list[LevelTargets], batch: Batch,
                         has_boxes: Tensor) -> Tensor:
        """Weighted BCE, averaged over the counted cells of images with box annotations."""
        total, count = outputs.levels[0].new_zeros(()), 0
        gt_boxes = [b.to(has_boxes.device).float() for b in batch.boxes]
        for level, (raw, target) in enumerate(zip(outputs.levels, targets)):
            logits = raw[..., 4]
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[target.image, target.anchor, target.cell_y, target.cell_x] = True
            ignored = self._ignored(outputs, level, gt_boxes, has_boxes) & ~positive
            counted = has_boxes.view(-1, 1, 1, 1) & ~ignored
            bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
            weight = torch.where(positive, self.options.obj_weight, self.options.noobj_weight)
            total = total + (bce * weight)[counted].sum()
            count += int(counted.sum())
        return total / max(count, 1)

    @torch.no_grad()
    def _ignored(self, outputs: YoloOutputs, level: int, gt_boxes: list[Tensor], has_boxes: Tensor) -> Tensor:
        """[B, A, H, W] predictions that already cover a GT well (YOLOv3's ignore rule)."""
        boxes = self.decode_level_boxes(outputs, level)
        ignored = torch.zeros(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
        for i, gt in enumerate(gt_boxes):
            if bool(has_boxes[i]) and gt.shape[0] > 0:
                best = box_iou(boxes[i].reshape(-1, 4), gt).amax(dim=1)
                ignored[i] = (best > self.options.ignore_iou).view(ignored.shape[1:])
        return ignored

    def _gather_positives(self, outputs: YoloOutputs, targets: list[LevelTargets]) -> _Positives:
        parts = []
        for level, (raw, target) in enumerate(zip(outputs.levels, targets)):
            parts.append(_Positives(
                raw=raw[target.image, target.anchor, target.cell_y, target.cell_x],
                cells=torch.stack([target.cell_x, target.cell_y], dim=1).to(raw.dtype),
                anchors=self._anchor_tensor(level, raw.device)[target.anchor],
                strides=torch.full((len(target.image), 1), float(self.strides[level]), device=raw.device),
                boxes=target.boxes, labels=target.labels, encoded=target.raw,
            ))
        return _Positives(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(_Positives)))

    def _box_loss(self, positives: _Positives) -> Tensor:
        if self.options.box_loss == "giou":
            predicted = decode_boxes(positives.raw, positives.cells, positives.anchors, positives.strides)
            return generalized_box_iou_loss(predicted, positives.boxes, reduction="mean")
        # Original YOLOv3: squared error on the centre offsets and log-scales.
        def parameters(t: Tensor) -> Tensor:
            return torch.cat([_centre_offset(t[:, :2]), t[:, 2:4]], dim=1)
        squared = F.mse_loss(parameters(positives.raw), parameters(positives.encoded), reduction="none")
        return squared.sum(dim=1).mean()

    # ---- predictions -------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs: YoloOutputs) -> list[dict[str, Tensor]]:
        """Per image: {"boxes" [K,4] xyxy input px (clipped), "scores" [K], "labels" [K] int64}."""
        boxes = torch.cat([self.decode_level_boxes(outputs, level).flatten(1, 3)
                           for level in range(len(outputs.levels))], dim=1)
        raw = torch.cat([level.flatten(1, 3) for level in outputs.levels], dim=1)
        # Multi-label scores: a box may carry several classes, NMS runs per class.
        scores = raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()
        return [self._select(boxes[i], scores[i], outputs.image_size) for i in range(boxes.shape[0])]

    def _select(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """Threshold, keep the best candidates, class-aware NMS, cap the count."""
        flat = scores.flatten()
        top_scores, top = flat.topk(min(self.options.pre_nms_top_k, flat.numel()))
        confident = top_scores > self.options.conf_threshold
        top_scores, top = top_scores[confident], top[confident]
        labels = top % self.num_classes
        candidates = clip_boxes_to_image(boxes[top // self.num_classes], image_size)
        keep = batched_nms(candidates, top_scores, labels, self.options.nms_iou)[: self.options.max_detections]
        return {"boxes": candidates[keep], "scores": top_scores[keep], "labels": labels[keep]}

    def metric(self) -> CocoDetectionMetric:
        return CocoDetectionMetric(self.num_classes)


def _index_of_stride(stride: int, available: list[int]) -> int:
    if stride not in available:
        raise ValueError(f"YOLO head needs a feature map of stride {stride}; the backbone has strides {available}")
    return available.index(stride)


def _flatten_ground_truth(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes of all annotated images stacked, with their batch index; degenerate boxes dropped."""
    image, boxes, labels = [], [], []
    for i, (b, l) in enumerate(zip(batch.boxes, batch.box_labels)):
        if not bool(batch.has_boxes[i]):
            continue
        b = b.to(device).float().reshape(-1, 4)
        # Zero-width or zero-height boxes have no shape to match and no log-size to learn.
        valid = (b[:, 2:] > b[:, :2]).all(dim=1)
        image.append(torch.full((int(valid.sum()),), i, dtype=torch.long, device=device))
        boxes.append(b[valid])
        labels.append(l.to(device).long()[valid])
    if not boxes:
        return (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 4, device=device),
                torch.zeros(0, dtype=torch.long, device=device))
    return torch.cat(image), torch.cat(boxes), torch.cat(labels)
