"""YOLOv3-style anchor-based detection head over several backbone levels.

A light top-down FPN feeds one 1x1 prediction conv per level; each cell and
anchor predicts (tx, ty, tw, th, objectness, C class logits).

Assignment: each ground-truth box goes to the anchor, over all levels, whose shape fits it best, and
(`anchor_threshold`, as YOLOv5) to every other anchor whose width and height are within that factor of
the box's, at the cell holding its centre and (`neighbour_cells`) the two adjacent cells nearest to the
centre, which the (-0.5, 1.5) centre offset can still reach. A small training set then gives several
positives per object instead of one in thousands of cells.

Objectness is a BCE over every counted cell, summed and divided by the number of positives (as
RetinaNet normalises its classification loss; at least one per annotated image), so its weight against
the box term does not shrink as the grid grows with the image size. Cells inside ignore regions (crowds, "difficult" objects) and
predictions already overlapping a ground truth well (YOLOv3's ignore rule) are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, complete_box_iou_loss, generalized_box_iou_loss

from datasets.sample import Batch
from datasets.summary import DataSummary
from heads.anchors import kmeans_anchors
from heads.base import Head, zero_loss
from heads.blocks import index_of_stride
from heads.box_selection import SelectionOptions, select_detections
from heads.box_targets import cells_in_ignore_regions, flatten_ground_truth, paired_iou
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
    # Per level, [w, h] px; or "auto": fit_data() fits levels x anchors_per_level anchors to the training
    # boxes (k-means, IoU distance), smallest on the finest stride. Until then "auto" holds the default
    # anchors (resampled by area when the count differs); a checkpoint restores the fitted ones.
    anchors: list[list[list[float]]] | Literal["auto"] = "auto"
    anchors_per_level: int = 3  # only with anchors "auto"
    neck_channels: int = 64
    conf_threshold: float = 0.001  # low, as mAP evaluation wants every ranked detection (COCO, Ultralytics val)
    nms_iou: float = 0.5
    max_detections: int = 100
    pre_nms_top_k: int = 1000  # bounds NMS cost when an untrained head scores everything highly
    # Objectness BCE is weighted obj_weight on assigned cells and noobj_weight
    # elsewhere (YOLOv1's lambda_noobj); both are reported as the one "obj" term.
    obj_weight: float = 1.0
    noobj_weight: float = 1.0
    ignore_iou: float = 0.5  # unassigned predictions overlapping a GT above this get no obj loss (> 1 disables)
    # A box also goes to every anchor whose w and h are within this factor of its own (YOLOv5's anchor_t);
    # 0 keeps only the best-fitting anchor (YOLOv3).
    anchor_threshold: float = 4.0
    neighbour_cells: bool = True  # also the two adjacent cells nearest to the box centre (YOLOv5)
    # Objectness target of a positive: "iou" of its (detached) decoded box with the ground truth, so scores
    # rank detections by how well they fit (YOLOv5); "one" as in YOLOv3.
    obj_target: Literal["iou", "one"] = "iou"
    box_weight: float = 5.0
    cls_weight: float = 1.0
    # "giou" / "ciou" (GIoU + centre distance + aspect ratio) on decoded boxes | "mse" on (offset x, offset y, tw, th)
    box_loss: Literal["giou", "ciou", "mse"] = "giou"


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

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: YoloOptions,
                 image_channels: int = 3):
        super().__init__()
        if options.box_loss not in ("giou", "ciou", "mse"):
            raise ValueError(f"YOLO box_loss must be 'giou', 'ciou' or 'mse', got {options.box_loss!r}")
        options = _finest_first(options)  # the neck merges coarse into fine: levels must run fine to coarse
        self.options = options
        self.num_classes = num_classes
        self.feature_indices = [index_of_stride("YOLO", s, strides) for s in options.strides]
        self.strides = list(options.strides)
        initial = _initial_anchors(options)
        self.anchors_per_level = [len(level) for level in initial]
        # A persistent buffer, so checkpoints carry fitted anchors and .to(device) moves them.
        self.register_buffer("anchor_sizes", torch.tensor(
            [wh for level in initial for wh in level], dtype=torch.float32).reshape(-1, 2))
        self.neck = _TopDownNeck([channels[i] for i in self.feature_indices], options.neck_channels)
        self.predictors = nn.ModuleList(
            nn.Conv2d(options.neck_channels, count * (5 + num_classes), 1) for count in self.anchors_per_level
        )
        self._init_objectness_bias()

    @property
    def anchors(self) -> list[Tensor]:
        """Per level, [A, 2] (w, h) px: views of the `anchor_sizes` buffer."""
        return list(self.anchor_sizes.split(self.anchors_per_level))

    def fit_data(self, summary: DataSummary) -> None:
        """With anchors "auto": k-means anchors on the training boxes, smallest to the finest stride."""
        if self.options.anchors != "auto":
            return
        if summary.box_sizes.shape[0] == 0:
            raise ValueError("YOLO anchors 'auto' need training boxes to fit, but the training set has none; "
                             "give the anchors explicitly or use data with box annotations")
        fitted = kmeans_anchors(summary.box_sizes, k=len(self.anchor_sizes)).anchors  # sorted by area
        by_stride = sorted(range(len(self.strides)), key=lambda level: self.strides[level])
        groups = fitted.split([self.anchors_per_level[level] for level in by_stride])
        per_level = dict(zip(by_stride, groups))
        with torch.no_grad():
            self.anchor_sizes.copy_(torch.cat([per_level[level] for level in range(len(self.strides))]))

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
        return self.anchors[level].to(device)

    def decode_level_boxes(self, outputs: YoloOutputs, level: int) -> Tensor:
        """All boxes of one level, [B, A, H, W, 4] xyxy input pixels."""
        raw = outputs.levels[level]
        cells = _grid(raw.shape[2], raw.shape[3], raw.device)
        anchors = self._anchor_tensor(level, raw.device).view(-1, 1, 1, 2)
        return decode_boxes(raw, cells, anchors, self.strides[level])

    # ---- targets -----------------------------------------------------------

    def assign_targets(self, outputs: YoloOutputs, batch: Batch) -> list[LevelTargets]:
        """Rows of (image, anchor, cell, box) pairs per level; see the module docstring for the rule.

        Two boxes landing on one (cell, anchor) both keep their rows: the
        prediction is pulled towards both, as in the original YOLOv3.
        """
        device = outputs.levels[0].device
        truth = flatten_ground_truth(batch, device)
        level_of, anchor_of, shapes = self._anchor_table(device)
        sizes = truth.boxes[:, 2:] - truth.boxes[:, :2]
        best = box_iou(_centred(sizes), _centred(shapes)).argmax(dim=1)
        matched = F.one_hot(best, len(shapes)).bool() if len(best) else torch.zeros(0, len(shapes), dtype=torch.bool,
                                                                                     device=device)
        if self.options.anchor_threshold > 0:
            ratio = sizes[:, None, :] / shapes[None]
            matched |= torch.maximum(ratio, 1 / ratio).amax(dim=2) < self.options.anchor_threshold
        box_index, anchor_index = matched.nonzero(as_tuple=True)
        targets = []
        for level, raw in enumerate(outputs.levels):
            chosen = level_of[anchor_index] == level
            rows = box_index[chosen]
            targets.append(self._level_targets(level, raw.shape[2:4], truth.image[rows],
                                               anchor_of[anchor_index[chosen]], truth.boxes[rows], truth.labels[rows]))
        return targets

    def _anchor_table(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Every anchor of every level: its level, its index within the level and its [w, h]."""
        level_of = torch.cat([torch.full((count,), level) for level, count in enumerate(self.anchors_per_level)])
        anchor_of = torch.cat([torch.arange(count) for count in self.anchors_per_level])
        return level_of.to(device), anchor_of.to(device), self.anchor_sizes.to(device)

    def _level_targets(self, level: int, grid: tuple[int, int], image: Tensor, anchor: Tensor,
                       boxes: Tensor, labels: Tensor) -> LevelTargets:
        stride = self.strides[level]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride  # (x, y) in cells
        # Centres on or past the border belong to the edge cell.
        home = torch.stack([centre[:, 0].floor().clamp(0, grid[1] - 1), centre[:, 1].floor().clamp(0, grid[0] - 1)], 1)
        cells, rows = [home], [torch.arange(len(boxes), device=boxes.device)]
        if self.options.neighbour_cells:
            for axis, size in ((0, grid[1]), (1, grid[0])):
                offset = torch.where(centre[:, axis] - home[:, axis] < 0.5, -1.0, 1.0)
                neighbour = home.clone()
                neighbour[:, axis] += offset
                inside = (neighbour[:, axis] >= 0) & (neighbour[:, axis] <= size - 1)
                cells.append(neighbour[inside])
                rows.append(rows[0][inside])
        cells, rows = torch.cat(cells), torch.cat(rows)
        priors = self._anchor_tensor(level, boxes.device)[anchor[rows]]
        raw = encode_boxes(boxes[rows], cells, priors, stride)
        return LevelTargets(image=image[rows], anchor=anchor[rows], cell_y=cells[:, 1].long(),
                            cell_x=cells[:, 0].long(), boxes=boxes[rows], labels=labels[rows], raw=raw)

    # ---- loss --------------------------------------------------------------

    def loss(self, outputs: YoloOutputs, batch: Batch) -> dict[str, Tensor]:
        has_boxes = batch.has_boxes.to(outputs.levels[0].device)
        zero = sum(zero_loss(level) for level in outputs.levels)
        if not bool(has_boxes.any()):
            return {"obj": zero, "box": zero, "cls": zero}
        targets = self.assign_targets(outputs, batch)
        positives = self._gather_positives(outputs, targets)
        obj = self._objectness_loss(outputs, targets, positives, batch, has_boxes)
        if positives.raw.shape[0] == 0:
            return {"obj": obj, "box": zero, "cls": zero}
        box = self._box_loss(positives)
        one_hot = F.one_hot(positives.labels, self.num_classes).to(positives.raw.dtype)
        # Mean over positives and classes, so its scale does not grow with C.
        cls = F.binary_cross_entropy_with_logits(positives.raw[:, 5:], one_hot)
        return {"obj": obj, "box": self.options.box_weight * box, "cls": self.options.cls_weight * cls}

    def _objectness_loss(self, outputs: YoloOutputs, targets: list[LevelTargets], positives: _Positives,
                         batch: Batch, has_boxes: Tensor) -> Tensor:
        """Weighted BCE summed over the counted cells of images with box annotations, per positive."""
        total = outputs.levels[0].new_zeros((), dtype=torch.float32)
        gt_boxes = [b.to(has_boxes.device).float() for b in batch.boxes]
        quality = self._objectness_targets(positives).split([len(t.image) for t in targets])
        for level, (raw, target, target_quality) in enumerate(zip(outputs.levels, targets, quality)):
            logits = raw[..., 4].float()
            at = (target.image, target.anchor, target.cell_y, target.cell_x)
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[at] = True
            wanted = torch.zeros_like(logits)
            wanted[at] = target_quality
            stride = float(self.strides[level])
            in_regions = cells_in_ignore_regions(batch, tuple(raw.shape[2:4]), (stride, stride), raw.device)
            ignored = (self._ignored(outputs, level, gt_boxes, has_boxes) | in_regions.unsqueeze(1)) & ~positive
            counted = has_boxes.view(-1, 1, 1, 1) & ~ignored
            bce = F.binary_cross_entropy_with_logits(logits, wanted, reduction="none")
            weight = torch.where(positive, self.options.obj_weight, self.options.noobj_weight)
            total = total + (bce * weight)[counted].sum()
        # At least one per annotated image, so a batch of empty images weighs like a sparse one, not 1000x more.
        return total / max(int(positives.raw.shape[0]), int(has_boxes.sum()))

    @torch.no_grad()
    def _objectness_targets(self, positives: _Positives) -> Tensor:
        """[P] what each positive's objectness should be: 1, or the IoU of its decoded box with its ground truth."""
        if self.options.obj_target == "one" or positives.raw.shape[0] == 0:
            return torch.ones(positives.raw.shape[0], device=positives.raw.device)
        predicted = decode_boxes(positives.raw.float(), positives.cells, positives.anchors, positives.strides)
        return paired_iou(predicted, positives.boxes).clamp(min=0)

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
        if self.options.box_loss in ("giou", "ciou"):
            predicted = decode_boxes(positives.raw, positives.cells, positives.anchors, positives.strides)
            iou_loss = generalized_box_iou_loss if self.options.box_loss == "giou" else complete_box_iou_loss
            return iou_loss(predicted, positives.boxes, reduction="mean")
        # Original YOLOv3: squared error on the centre offsets and log-scales.
        def parameters(t: Tensor) -> Tensor:
            return torch.cat([_centre_offset(t[:, :2]), t[:, 2:4]], dim=1)
        squared = F.mse_loss(parameters(positives.raw), parameters(positives.encoded), reduction="none")
        return squared.sum(dim=1).mean()

    # ---- predictions -------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs: YoloOutputs) -> list[dict[str, Tensor]]:
        """Per image: {"boxes" [K,4] xyxy input px (clipped), "scores" [K], "labels" [K] int64}."""
        boxes, scores = self.dense_predictions(outputs)
        return [self._select(boxes[i], scores[i], outputs.image_size) for i in range(boxes.shape[0])]

    def dense_predictions(self, outputs: YoloOutputs) -> tuple[Tensor, Tensor]:
        """Every anchor's box and per-class scores before selection: boxes [B, N, 4] xyxy input px, scores
        [B, N, C]. Differentiable (explain's per-box attributions use it); decode selects from it."""
        # float32: bf16/fp16 under autocast cannot place a box to the pixel at common image sizes.
        outputs = YoloOutputs(levels=[level.float() for level in outputs.levels], image_size=outputs.image_size)
        boxes = torch.cat([self.decode_level_boxes(outputs, level).flatten(1, 3)
                           for level in range(len(outputs.levels))], dim=1)
        raw = torch.cat([level.flatten(1, 3) for level in outputs.levels], dim=1)
        # Multi-label scores: a box may carry several classes, NMS runs per class.
        return boxes, raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()

    def _select(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
        o = self.options
        return select_detections(boxes, scores, image_size,
                                 SelectionOptions(o.conf_threshold, o.nms_iou, o.max_detections, o.pre_nms_top_k))

    def metric(self) -> CocoDetectionMetric:
        return CocoDetectionMetric(self.num_classes)

    def named_outputs(self, outputs: YoloOutputs) -> dict[str, Tensor]:
        """One raw map per level, named by its stride: [B, A, H/stride, W/stride, 5 + C]."""
        return {str(stride): level for stride, level in zip(self.strides, outputs.levels)}

    def from_named_outputs(self, named: dict[str, Tensor], image_size: tuple[int, int]) -> YoloOutputs:
        return YoloOutputs(levels=[named[str(stride)] for stride in self.strides], image_size=image_size)


def _initial_anchors(options: YoloOptions) -> list[list[list[float]]]:
    """The anchors a head starts with: the given ones, or for "auto" the defaults until fit_data."""
    levels = len(options.strides)
    if options.anchors != "auto":
        if len(options.anchors) != levels:
            raise ValueError(f"YOLO options give {len(options.anchors)} anchor levels for {levels} strides")
        return [[list(map(float, wh)) for wh in level] for level in options.anchors]
    if options.anchors_per_level < 1:
        raise ValueError(f"YOLO anchors_per_level must be at least 1, got {options.anchors_per_level}")
    defaults = sorted((wh for level in _default_anchors() for wh in level), key=lambda wh: wh[0] * wh[1])
    count = levels * options.anchors_per_level
    # Evenly spaced picks through the defaults sorted by area (all of them, in order, for 3 x 3).
    picks = [defaults[round(i * (len(defaults) - 1) / max(count - 1, 1))] for i in range(count)]
    rank = {level: r for r, level in enumerate(sorted(range(levels), key=lambda level: options.strides[level]))}
    per_level = options.anchors_per_level
    return [[list(map(float, wh)) for wh in picks[rank[level] * per_level:(rank[level] + 1) * per_level]]
            for level in range(levels)]


def _finest_first(options: YoloOptions) -> YoloOptions:
    """The options with strides ascending (explicit anchors reordered with them)."""
    order = sorted(range(len(options.strides)), key=lambda level: options.strides[level])
    anchors = options.anchors
    if anchors != "auto" and len(anchors) == len(order):
        anchors = [anchors[level] for level in order]
    return replace(options, strides=[options.strides[level] for level in order], anchors=anchors)
