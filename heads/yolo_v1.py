"""YOLOv1-style detection head: one S x S grid on one backbone map, B boxes and one class distribution per cell.

Differences from the paper (Redmon et al., 2016), and why:
- The paper's two fully connected layers need a fixed input size; here a 3x3 conv block and a 1x1
  prediction conv make the grid from the feature map of `stride`, so any input size works (S = size /
  stride) and each cell sees its receptive field rather than the whole image.
- Outputs pass through sigmoids (x, y offsets in the cell; sqrt of w, h relative to the image; confidence)
  and a softmax (class probabilities) instead of the paper's linear layer, so decoded boxes are always
  valid; the losses are still the paper's sum-squared errors on those values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from datasets.sample import Batch
from heads.base import Head, zero_loss
from heads.blocks import conv_bn_relu
from heads.box_selection import SelectionOptions, select_detections
from heads.box_targets import cells_in_ignore_regions, flatten_ground_truth, paired_iou
from heads.detection_metric import CocoDetectionMetric


@dataclass
class YoloV1Options:
    stride: int = 32              # the backbone map the grid is made from: S = input size / stride
    boxes_per_cell: int = 2       # the paper's B
    hidden_channels: int = 128    # width of the conv block before the 1x1 prediction conv
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    # Confidence target of a responsible predictor: "iou" of its (detached) box with the ground truth,
    # as in the paper, or "one" (simpler, trains faster when boxes are still poor).
    confidence_target: Literal["iou", "one"] = "iou"
    conf_threshold: float = 0.001  # low, as mAP evaluation wants every ranked detection (COCO, Ultralytics val)
    nms_iou: float = 0.5
    max_detections: int = 100
    pre_nms_top_k: int = 1000     # bounds NMS cost when an untrained head scores everything highly


@dataclass
class YoloV1Outputs:
    # [B, Sh, Sw, 5 * boxes_per_cell + C] raw logits: per predictor (x, y, sqrt w, sqrt h, confidence),
    # then the cell's class logits.
    grid: Tensor
    image_size: tuple[int, int]   # (height, width) of the network input


@dataclass
class CellTargets:
    """One row per ground-truth box of an annotated image."""
    image: Tensor      # [P] batch index
    cell_y: Tensor     # [P]
    cell_x: Tensor     # [P]
    predictor: Tensor  # [P] the responsible one of the cell's B predictors
    boxes: Tensor      # [P, 4] xyxy input px
    labels: Tensor     # [P] int64
    values: Tensor     # [P, 4] (x offset, y offset, sqrt w, sqrt h) the loss compares, all in [0, 1]


_EPS = 1e-6  # keeps logit() finite for boxes on a cell edge or as large as the image


def decode_boxes(values: Tensor, image_size: tuple[int, int]) -> Tensor:
    """[..., Sh, Sw, B, 4] (x offset, y offset, sqrt w, sqrt h) -> xyxy input px."""
    rows, cols = values.shape[-4], values.shape[-3]
    height, width = image_size
    ys = torch.arange(rows, device=values.device, dtype=values.dtype).view(rows, 1, 1)
    xs = torch.arange(cols, device=values.device, dtype=values.dtype).view(1, cols, 1)
    cx = (xs + values[..., 0]) * width / cols
    cy = (ys + values[..., 1]) * height / rows
    w, h = values[..., 2] ** 2 * width, values[..., 3] ** 2 * height
    return box_convert(torch.stack([cx, cy, w, h], dim=-1), "cxcywh", "xyxy")


def encode_boxes(boxes: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """xyxy px [P, 4] -> (cell_y [P], cell_x [P], values [P, 4]) as `decode_boxes` reads them."""
    rows, cols = grid
    height, width = image_size
    cx, cy, w, h = box_convert(boxes, "xyxy", "cxcywh").unbind(dim=1)
    # Centres on or past the border belong to the edge cell.
    cell_x = (cx * cols / width).floor().long().clamp(0, cols - 1)
    cell_y = (cy * rows / height).floor().long().clamp(0, rows - 1)
    values = torch.stack([cx * cols / width - cell_x, cy * rows / height - cell_y,
                          (w / width).clamp(min=0).sqrt(), (h / height).clamp(min=0).sqrt()], dim=1)
    return cell_y, cell_x, values.clamp(0.0, 1.0)


def to_logits(values: Tensor) -> Tensor:
    """Raw outputs whose sigmoid gives `values` (for tests and for placing known boxes)."""
    return torch.logit(values.clamp(_EPS, 1 - _EPS))


class YoloV1Head(Head):
    kind = "detection"
    Options = YoloV1Options

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: YoloV1Options,
                 image_channels: int = 3):
        super().__init__()
        if options.stride not in strides:
            raise ValueError(f"YOLOv1 head needs a feature map of stride {options.stride}; "
                             f"the backbone has strides {strides}")
        if options.boxes_per_cell < 1:
            raise ValueError(f"YOLOv1 boxes_per_cell must be at least 1, got {options.boxes_per_cell}")
        self.options = options
        self.num_classes = num_classes
        self.feature_index = strides.index(options.stride)
        self.block = conv_bn_relu(channels[self.feature_index], options.hidden_channels)
        self.predict = nn.Conv2d(options.hidden_channels, 5 * options.boxes_per_cell + num_classes, 1)

    def forward(self, features: list[Tensor], image: Tensor) -> YoloV1Outputs:
        grid = self.predict(self.block(features[self.feature_index])).permute(0, 2, 3, 1).contiguous()
        return YoloV1Outputs(grid=grid, image_size=(image.shape[-2], image.shape[-1]))

    def _split(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """-> per predictor raw [B, Sh, Sw, boxes_per_cell, 5], class logits [B, Sh, Sw, C]."""
        b, rows, cols, _ = grid.shape
        boxes = grid[..., : 5 * self.options.boxes_per_cell].view(b, rows, cols, self.options.boxes_per_cell, 5)
        return boxes, grid[..., 5 * self.options.boxes_per_cell:]

    def decoded_boxes(self, outputs: YoloV1Outputs) -> Tensor:
        """[B, Sh, Sw, boxes_per_cell, 4] xyxy input px."""
        raw, _ = self._split(outputs.grid)
        return decode_boxes(raw[..., :4].sigmoid(), outputs.image_size)

    # ---- targets -----------------------------------------------------------

    @torch.no_grad()
    def assign_targets(self, outputs: YoloV1Outputs, batch: Batch) -> CellTargets:
        """Each GT box goes to the cell holding its centre, to that cell's predictor whose current box overlaps
        it most. Two boxes in one cell both keep their rows (the paper's grid can only fit one of them)."""
        truth = flatten_ground_truth(batch, outputs.grid.device)
        cell_y, cell_x, values = encode_boxes(truth.boxes, tuple(outputs.grid.shape[1:3]), outputs.image_size)
        candidates = self.decoded_boxes(outputs)[truth.image, cell_y, cell_x]  # [P, B, 4]
        predictor = paired_iou(candidates, truth.boxes.unsqueeze(1)).argmax(dim=1)
        return CellTargets(image=truth.image, cell_y=cell_y, cell_x=cell_x, predictor=predictor,
                           boxes=truth.boxes, labels=truth.labels, values=values)

    # ---- loss --------------------------------------------------------------

    def loss(self, outputs: YoloV1Outputs, batch: Batch) -> dict[str, Tensor]:
        """The paper's sum-squared errors, divided by the number of images with box annotations."""
        grid = outputs.grid
        zero = zero_loss(grid)
        annotated = batch.has_boxes.to(grid.device)
        if not bool(annotated.any()):
            return {"coord": zero, "obj": zero, "noobj": zero, "cls": zero}
        images = annotated.sum()
        raw, class_logits = self._split(grid)
        target = self.assign_targets(outputs, batch)
        confidence = raw[..., 4].sigmoid()
        responsible = torch.zeros_like(confidence, dtype=torch.bool)
        responsible[target.image, target.cell_y, target.cell_x, target.predictor] = True
        rows, cols = grid.shape[1:3]
        stride = (outputs.image_size[0] / rows, outputs.image_size[1] / cols)
        ignored = cells_in_ignore_regions(batch, (rows, cols), stride, grid.device).unsqueeze(-1)
        unmatched = ~responsible & ~ignored & annotated.view(-1, 1, 1, 1)
        noobj = self.options.lambda_noobj * (confidence[unmatched] ** 2).sum() / images
        if len(target.image) == 0:
            return {"coord": zero, "obj": zero, "noobj": noobj, "cls": zero}
        at = (target.image, target.cell_y, target.cell_x)
        predicted = raw[(*at, target.predictor)]  # [P, 5]
        coord = ((predicted[:, :4].sigmoid() - target.values) ** 2).sum()
        obj = ((predicted[:, 4].sigmoid() - self._confidence_target(outputs, target)) ** 2).sum()
        one_hot = torch.nn.functional.one_hot(target.labels, self.num_classes).to(grid.dtype)
        cls = ((class_logits[at].softmax(dim=-1) - one_hot) ** 2).sum()
        return {"coord": self.options.lambda_coord * coord / images, "obj": obj / images,
                "noobj": noobj, "cls": cls / images}

    @torch.no_grad()
    def _confidence_target(self, outputs: YoloV1Outputs, target: CellTargets) -> Tensor:
        if self.options.confidence_target == "one":
            return torch.ones(len(target.image), device=outputs.grid.device)
        boxes = self.decoded_boxes(outputs)[target.image, target.cell_y, target.cell_x, target.predictor]
        return paired_iou(boxes, target.boxes)

    # ---- predictions -------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs: YoloV1Outputs) -> list[dict[str, Tensor]]:
        """Per image: {"boxes" [K,4] xyxy input px (clipped), "scores" [K], "labels" [K] int64}.

        Score = confidence x class probability of the cell, thresholded, then class-aware NMS.
        """
        boxes, scores = self.dense_predictions(outputs)
        o = self.options
        selection = SelectionOptions(o.conf_threshold, o.nms_iou, o.max_detections, o.pre_nms_top_k)
        return [select_detections(boxes[i], scores[i], outputs.image_size, selection)
                for i in range(boxes.shape[0])]

    def dense_predictions(self, outputs: YoloV1Outputs) -> tuple[Tensor, Tensor]:
        """Every predictor's box and per-class scores before selection: boxes [B, N, 4] xyxy input px, scores
        [B, N, C]. Differentiable (explain's per-box attributions use it); decode selects from it."""
        # float32: bf16/fp16 under autocast cannot place a box to the pixel at common image sizes.
        outputs = YoloV1Outputs(grid=outputs.grid.float(), image_size=outputs.image_size)
        raw, class_logits = self._split(outputs.grid)
        boxes = self.decoded_boxes(outputs).flatten(1, 3)
        scores = raw[..., 4:5].sigmoid() * class_logits.softmax(dim=-1).unsqueeze(3)  # [B, Sh, Sw, B, C]
        return boxes, scores.flatten(1, 3)

    def metric(self) -> CocoDetectionMetric:
        return CocoDetectionMetric(self.num_classes)

    output_name = "grid"  # [B, S_h, S_w, 5 * boxes_per_cell + C]

    def named_outputs(self, outputs: YoloV1Outputs) -> dict[str, Tensor]:
        return {self.output_name: outputs.grid}

    def from_named_outputs(self, named: dict[str, Tensor], image_size: tuple[int, int]) -> YoloV1Outputs:
        return YoloV1Outputs(grid=named[self.output_name], image_size=image_size)

