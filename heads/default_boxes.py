"""SSD's default boxes (priors) for a list of feature-map grids and an input size (Liu et al. 2016, section 2.2).

Map k of m has the scale s_k = s_min + (s_max - s_min)(k - 1)/(m - 1). Each cell centre ((j + 0.5)/|f_k|,
(i + 0.5)/|f_k|) gets a box of side s_k (ratio 1), one of side sqrt(s_k s_{k+1}) (s_{m+1} = 1), and for each
ratio r > 1 the pair (s_k sqrt r, s_k / sqrt r) and its transpose: 2 + 2 * len(ratios) boxes. Sizes are
fractions of the image's width and height, clipped to 1. torchvision's DefaultBoxGenerator computes them; this
wraps it for grids known by their size alone (an exported model's outputs carry no feature maps).

Order: map by map, within a map cell by cell (row-major), within a cell box by box, which is the order of the
head's flattened [B, H, W, A, K] outputs.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList


def ssd300_aspect_ratios(maps: int) -> list[list[float]]:
    """SSD300's layout: {1, 2, 1/2} on the first and last maps, {1, 2, 3, 1/2, 1/3} elsewhere (ratios > 1 listed;
    each also gives its inverse)."""
    return [[2.0] if k in (0, maps - 1) else [2.0, 3.0] for k in range(maps)]


class DefaultBoxes:
    """The priors of a head with len(aspect_ratios) maps; a plain object (no state a checkpoint would need)."""

    def __init__(self, aspect_ratios: list[list[float]], min_scale: float, max_scale: float):
        self.generator = DefaultBoxGenerator([list(r) for r in aspect_ratios], min_scale, max_scale)

    @property
    def aspect_ratios(self) -> list[list[float]]:
        return [list(r) for r in self.generator.aspect_ratios]

    @property
    def scales(self) -> list[float]:
        """s_1 .. s_m, then s_{m+1} = 1 (only the extra ratio-1 box of map m reads it)."""
        return list(self.generator.scales)

    def boxes_per_location(self) -> list[int]:
        return self.generator.num_anchors_per_location()

    def __call__(self, grids: list[tuple[int, int]], image_size: tuple[int, int], device: torch.device) -> Tensor:
        """[N, 4] xyxy input px, float32, for maps of `grids` (rows, cols) on an input of `image_size` (H, W)."""
        # The generator reads only shapes: empty stand-ins for the image and the feature maps.
        images = ImageList(torch.empty(0, 0, *image_size, device=device), [tuple(image_size)])
        maps = [torch.empty(0, 0, rows, cols, device=device) for rows, cols in grids]
        return self.generator(images, maps)[0]
