"""Anchor priors fitted to a training set's box sizes: k-means with the IoU distance (YOLOv2).

Boxes are compared by shape only, as if they shared a centre, so the
distance 1 - IoU does not favour large boxes the way Euclidean distance on
(w, h) would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KMeansResult:
    anchors: Tensor     # [k, 2] (w, h), sorted by area, smallest first
    mean_iou: float     # mean IoU of every box with its nearest anchor: the fit's quality


def shape_iou(sizes: Tensor, centres: Tensor) -> Tensor:
    """[N, 2] x [K, 2] (w, h) -> [N, K] IoU of boxes sharing a centre."""
    inter = torch.minimum(sizes[:, None], centres[None]).prod(dim=2)
    union = sizes.prod(dim=1)[:, None] + centres.prod(dim=1)[None] - inter
    return inter / union


def kmeans_anchors(sizes: Tensor, k: int, restarts: int = 3, max_iterations: int = 300,
                   seed: int = 0) -> KMeansResult:
    """Cluster box sizes [N, 2] into k anchors; the best of `restarts` k-means++ runs by mean IoU.

    Deterministic for a given seed. Boxes without area are dropped; with
    fewer distinct boxes than k, some anchors repeat.
    """
    sizes = sizes.detach().double().reshape(-1, 2)
    sizes = sizes[(sizes > 0).all(dim=1)]
    if sizes.shape[0] == 0:
        raise ValueError("cannot fit anchors: there are no boxes with a positive width and height")
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(max(restarts, 1)):
        centres = _lloyd(sizes, _kmeans_plus_plus(sizes, k, generator), max_iterations)
        fit = KMeansResult(_by_area(centres).float(), float(shape_iou(sizes, centres).amax(dim=1).mean()))
        if best is None or fit.mean_iou > best.mean_iou:
            best = fit
    return best


def _kmeans_plus_plus(sizes: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Seeds drawn with probability proportional to their squared distance from the nearest seed so far."""
    chosen = [int(torch.randint(len(sizes), (1,), generator=generator))]
    for _ in range(1, k):
        distance = (1 - shape_iou(sizes, sizes[chosen])).amin(dim=1).clamp(min=0) ** 2
        if float(distance.sum()) <= 0:  # every box already coincides with a seed
            distance = torch.ones_like(distance)
        chosen.append(int(torch.multinomial(distance, 1, generator=generator)))
    return sizes[chosen].clone()


def _lloyd(sizes: Tensor, centres: Tensor, max_iterations: int) -> Tensor:
    """Assign to the nearest centre (highest IoU), move centres to their cluster's median, until stable."""
    assignment = None
    for _ in range(max_iterations):
        nearest = shape_iou(sizes, centres).argmax(dim=1)
        if assignment is not None and torch.equal(nearest, assignment):
            break
        assignment = nearest
        for j in range(len(centres)):
            members = sizes[assignment == j]
            if len(members):  # an emptied cluster keeps its centre
                # The median, as in the usual YOLO anchor scripts: a few outlier boxes do not drag it.
                centres[j] = members.median(dim=0).values
    return centres


def _by_area(anchors: Tensor) -> Tensor:
    return anchors[anchors.prod(dim=1).argsort()]
