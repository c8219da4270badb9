"""SSD detection head (Liu et al. 2016): default boxes on several maps, softmax classes with a background class.

Maps: the backbone's maps at `strides`, then `extra_layers` blocks (1x1 reduce, 3x3 stride-2 conv) on the
deepest, as the paper adds conv8-conv11 where VGG stops; each pads, so maps shrink to 1x1 and stay there
at small inputs. Per map, a 3x3 conv predicts 4 offsets and one 3x3 conv C + 1 class logits (0: background)
for each of its default boxes (heads/default_boxes.py).

Loss (training targets in heads/ssd_matching.py): smooth L1 on the offsets of the positives plus softmax
cross-entropy over the positives and the hard negatives, both divided by the number of positives. Images
without box annotations count nothing; priors whose centre lies in an ignore region are never negatives (a
prior matched to a box stays positive, as in the YOLO head). Differences from the paper: no L2 normalisation
of the finest map (the backbones here have BatchNorm), BatchNorm in the extra blocks, and a background bias
so that early training starts from "nothing here" (as RetinaNet's prior) instead of from chance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.sample import Batch
from heads.base import Head, zero_loss
from heads.blocks import index_of_stride
from heads.box_selection import SelectionOptions, select_detections
from heads.box_targets import cells_in_ignore_regions, flatten_ground_truth
from heads.default_boxes import DefaultBoxes, ssd300_aspect_ratios
from heads.detection_metric import CocoDetectionMetric
from heads.ssd_matching import IGNORED, PriorTargets, box_coder, hard_negatives, match_priors

FOREGROUND_PRIOR = 0.01   # initial P(not background) per default box: keeps the first losses small and stable


@dataclass
class SSDOptions:
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])   # backbone maps (any order; sorted)
    extra_layers: int = 3           # blocks after the deepest map, each halving it: strides 64, 128, 256
    extra_channels: int = 256       # output channels of each extra block (its 1x1 reduces to half of them)
    min_scale: float = 0.2          # s_min and s_max: default box sizes as fractions of the image
    max_scale: float = 0.9
    # Per map (backbone maps finest first, then the extra maps), ratios r > 1; each adds boxes of r and 1/r
    # besides the two square ones. None: SSD300's, [2] on the first and last maps and [2, 3] elsewhere.
    aspect_ratios: list[list[float]] | None = None
    iou_threshold: float = 0.5      # a prior at least this close to a box is a positive for it
    neg_pos_ratio: int = 3          # hard negatives kept per positive, per image
    box_weight: float = 1.0         # the paper's alpha
    conf_threshold: float = 0.001   # low, as mAP evaluation wants every ranked detection (as the YOLO heads)
    nms_iou: float = 0.45
    max_detections: int = 100
    pre_nms_top_k: int = 1000       # bounds NMS cost when an untrained head scores everything highly

    def __post_init__(self) -> None:
        if self.extra_layers < 0:
            raise ValueError(f"SSD extra_layers must be >= 0, got {self.extra_layers}")
        if self.extra_channels < 2:
            raise ValueError(f"SSD extra_channels must be at least 2, got {self.extra_channels}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"SSD min_scale and max_scale need 0 < min_scale <= max_scale, got "
                             f"{self.min_scale} and {self.max_scale}")
        if self.neg_pos_ratio < 0:
            raise ValueError(f"SSD neg_pos_ratio must be >= 0, got {self.neg_pos_ratio}")
        if self.aspect_ratios is not None and any(r <= 1 for level in self.aspect_ratios for r in level):
            raise ValueError(f"SSD aspect_ratios must all be > 1 (each r also gives 1/r; ratio 1 is always there), "
                             f"got {self.aspect_ratios}")


@dataclass
class SSDOutputs:
    offsets: list[Tensor]        # per map [B, H, W, A, 4] raw box offsets (BoxCoder weights 10, 10, 5, 5)
    logits: list[Tensor]         # per map [B, H, W, A, C + 1] class logits, 0 = background
    image_size: tuple[int, int]  # (height, width) of the network input: the priors scale with it


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 reduce, then a padded 3x3 stride-2 conv: halves the map, and keeps a 1x1 map 1x1."""
    middle = out_channels // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, middle, 1, bias=False), nn.BatchNorm2d(middle), nn.ReLU(inplace=True),
        nn.Conv2d(middle, out_channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SSDHead(Head):
    kind = "detection"
    Options = SSDOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: SSDOptions,
                 image_channels: int = 3):
        super().__init__()
        self.options = options
        self.num_classes = num_classes
        backbone_strides = sorted(options.strides)
        self.feature_indices = [index_of_stride("SSD", s, strides) for s in backbone_strides]
        self.map_strides = backbone_strides + [backbone_strides[-1] * 2 ** (k + 1) for k in range(options.extra_layers)]
        ratios = options.aspect_ratios if options.aspect_ratios is not None else ssd300_aspect_ratios(
            len(self.map_strides))
        if len(ratios) != len(self.map_strides):
            raise ValueError(f"SSD aspect_ratios has {len(ratios)} entries for {len(self.map_strides)} maps (strides "
                             f"{self.map_strides}: {len(backbone_strides)} backbone maps + extra_layers "
                             f"{options.extra_layers}); give one list per map")
        self.default_boxes = DefaultBoxes(ratios, options.min_scale, options.max_scale)
        self.boxes_per_location = self.default_boxes.boxes_per_location()
        map_channels = [channels[i] for i in self.feature_indices] + [options.extra_channels] * options.extra_layers
        self.extras = nn.ModuleList(extra_block(c, options.extra_channels)
                                    for c in map_channels[len(backbone_strides) - 1:-1])
        self.box_convs = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1)
                                       for c, a in zip(map_channels, self.boxes_per_location))
        self.class_convs = nn.ModuleList(nn.Conv2d(c, a * (num_classes + 1), 3, padding=1)
                                         for c, a in zip(map_channels, self.boxes_per_location))
        self._init_background_bias()

    def _init_background_bias(self) -> None:
        # softmax P(background) = 1 - FOREGROUND_PRIOR with the C class logits at 0
        background = math.log(self.num_classes * (1 - FOREGROUND_PRIOR) / FOREGROUND_PRIOR)
        for conv, count in zip(self.class_convs, self.boxes_per_location):
            with torch.no_grad():
                conv.bias.zero_()
                conv.bias.view(count, self.num_classes + 1)[:, 0] = background

    # ---- forward -----------------------------------------------------------

    def forward(self, features: list[Tensor], image: Tensor) -> SSDOutputs:
        maps = [features[i] for i in self.feature_indices]
        for block in self.extras:
            maps.append(block(maps[-1]))
        offsets = [_per_box(conv(x), 4) for conv, x in zip(self.box_convs, maps)]
        logits = [_per_box(conv(x), self.num_classes + 1) for conv, x in zip(self.class_convs, maps)]
        return SSDOutputs(offsets=offsets, logits=logits, image_size=(image.shape[-2], image.shape[-1]))

    def priors(self, outputs: SSDOutputs) -> Tensor:
        """[N, 4] xyxy input px, in the order of the flattened outputs."""
        grids = [(int(o.shape[1]), int(o.shape[2])) for o in outputs.offsets]
        return self.default_boxes(grids, outputs.image_size, outputs.offsets[0].device)

    # ---- loss --------------------------------------------------------------

    def loss(self, outputs: SSDOutputs, batch: Batch) -> dict[str, Tensor]:
        offsets, logits = _flat(outputs)
        has_boxes = batch.has_boxes.to(offsets.device)
        if not bool(has_boxes.any()):
            zero = zero_loss(offsets) + zero_loss(logits)
            return {"cls": zero, "box": zero}
        targets = self.targets(outputs, batch)
        positive = targets.labels > 0
        ce = F.cross_entropy(logits.flatten(0, 1), targets.labels.clamp(min=0).flatten(), reduction="none")
        ce = ce.view(positive.shape)
        negative = hard_negatives(ce, positive, targets.labels == 0, self.options.neg_pos_ratio)
        count = positive.sum().clamp(min=1)
        cls = ce[positive | negative].sum() / count
        box = F.smooth_l1_loss(offsets[positive], targets.encoded[positive], reduction="sum") / count
        return {"cls": cls, "box": self.options.box_weight * box}

    def targets(self, outputs: SSDOutputs, batch: Batch) -> PriorTargets:
        """Matched labels and offsets per prior (heads/ssd_matching.py), IGNORED in unannotated images and, for
        unmatched priors, where the prior's centre lies in an ignore region."""
        priors = self.priors(outputs)
        device = priors.device
        targets = match_priors(priors, flatten_ground_truth(batch, device), len(batch), self.options.iou_threshold)
        height, width = outputs.image_size
        in_regions = torch.cat([
            cells_in_ignore_regions(batch, (rows, cols), (height / rows, width / cols), device)
            .unsqueeze(-1).expand(-1, -1, -1, count).flatten(1)
            for (rows, cols), count in zip(((o.shape[1], o.shape[2]) for o in outputs.offsets),
                                           self.boxes_per_location)], dim=1)
        unannotated = ~batch.has_boxes.to(device).view(-1, 1)
        targets.labels[unannotated | (in_regions & (targets.labels == 0))] = IGNORED
        return targets

    # ---- predictions -------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs: SSDOutputs) -> list[dict[str, Tensor]]:
        """Per image: {"boxes" [K,4] xyxy input px (clipped), "scores" [K], "labels" [K] int64}."""
        boxes, scores = self.dense_predictions(outputs)
        o = self.options
        selection = SelectionOptions(o.conf_threshold, o.nms_iou, o.max_detections, o.pre_nms_top_k)
        return [select_detections(boxes[i], scores[i], outputs.image_size, selection) for i in range(boxes.shape[0])]

    def dense_predictions(self, outputs: SSDOutputs) -> tuple[Tensor, Tensor]:
        """Every default box's decoded box and class probabilities (softmax without the background column):
        boxes [B, N, 4] xyxy input px, scores [B, N, C]; float32 and differentiable."""
        offsets, logits = _flat(outputs)
        priors = self.priors(outputs)
        b, n = offsets.shape[:2]
        boxes = box_coder().decode_single(offsets.reshape(-1, 4), priors.repeat(b, 1)).view(b, n, 4)
        return boxes, logits.softmax(dim=-1)[..., 1:]

    def metric(self) -> CocoDetectionMetric:
        return CocoDetectionMetric(self.num_classes)

    def named_outputs(self, outputs: SSDOutputs) -> dict[str, Tensor]:
        """Per map, named by its stride: "offsets_<s>" [B, H, W, A, 4] and "logits_<s>" [B, H, W, A, C + 1]."""
        named = {}
        for stride, offsets, logits in zip(self.map_strides, outputs.offsets, outputs.logits):
            named[f"offsets_{stride}"] = offsets
            named[f"logits_{stride}"] = logits
        return named

    def from_named_outputs(self, named: dict[str, Tensor], image_size: tuple[int, int]) -> SSDOutputs:
        return SSDOutputs(offsets=[named[f"offsets_{s}"] for s in self.map_strides],
                          logits=[named[f"logits_{s}"] for s in self.map_strides], image_size=image_size)


def _per_box(x: Tensor, values: int) -> Tensor:
    """[B, A * K, H, W] -> [B, H, W, A, K]: the default boxes' order (heads/default_boxes.py)."""
    b, _, h, w = x.shape
    return x.view(b, -1, values, h, w).permute(0, 3, 4, 1, 2).contiguous()


def _flat(outputs: SSDOutputs) -> tuple[Tensor, Tensor]:
    """All maps' offsets [B, N, 4] and logits [B, N, C + 1], float32 (half precision cannot place a box to the
    pixel, and its softmax loses the small background margins)."""
    offsets = torch.cat([o.float().flatten(1, 3) for o in outputs.offsets], dim=1)
    logits = torch.cat([l.float().flatten(1, 3) for l in outputs.logits], dim=1)
    return offsets, logits
