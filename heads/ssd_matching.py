"""SSD's training targets (Liu et al. 2016, section 2.2): priors matched to ground truth, hard negative mining.

Matching, as torchvision's SSDMatcher: a prior whose best IoU with a ground-truth box reaches the threshold
is a positive for that box, and each ground-truth box also takes its best prior, so every box has at least
one positive however badly the priors fit it. Positives regress the offsets of `BoxCoder` with weights
(10, 10, 5, 5), i.e. the paper's variances 0.1 (centre) and 0.2 (log size).

Hard negative mining: of the background priors, each image keeps the `ratio` x (its positives) with the
highest classification loss; the rest do not count, so the ~1000x more negatives do not swamp the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from heads.box_targets import FlatBoxes

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
IGNORED = -1   # a prior's label when it is neither positive nor negative (image unannotated, ignore region)


@dataclass
class PriorTargets:
    labels: Tensor   # [B, N] int64: 0 background, c + 1 class c, IGNORED for neither
    encoded: Tensor  # [B, N, 4] the matched box's offsets from the prior (zeros where not positive)


def box_coder() -> BoxCoder:
    return BoxCoder(weights=BOX_CODER_WEIGHTS)


def match_priors(priors: Tensor, truth: FlatBoxes, num_images: int, iou_threshold: float) -> PriorTargets:
    """Every prior of every image against that image's boxes; images without boxes are all background (the
    caller marks unannotated images and ignore regions IGNORED)."""
    n = priors.shape[0]
    labels = torch.zeros(num_images, n, dtype=torch.long, device=priors.device)
    encoded = torch.zeros(num_images, n, 4, device=priors.device)
    matcher, coder = SSDMatcher(iou_threshold), box_coder()
    for i in range(num_images):
        rows = truth.image == i
        if not bool(rows.any()):   # the matcher refuses an empty IoU matrix
            continue
        boxes, classes = truth.boxes[rows], truth.labels[rows]
        matched = matcher(box_iou(boxes, priors))   # [N]: box index, or < 0 for background
        positive = matched >= 0
        labels[i, positive] = classes[matched[positive]] + 1
        encoded[i, positive] = coder.encode_single(boxes[matched[positive]], priors[positive])
    return PriorTargets(labels, encoded)


@torch.no_grad()
def hard_negatives(loss: Tensor, positive: Tensor, candidate: Tensor, ratio: int) -> Tensor:
    """[B, N] bool: per image, the `ratio` x (positives of that image) candidates of highest `loss` (all of them
    when there are fewer). `loss`, `positive`, `candidate`: [B, N]."""
    wanted = ratio * positive.sum(dim=1, keepdim=True)
    ranked = loss.float().masked_fill(~candidate, float("-inf"))
    rank = ranked.argsort(dim=1, descending=True).argsort(dim=1)   # 0 for the highest loss
    return candidate & (rank < wanted)
