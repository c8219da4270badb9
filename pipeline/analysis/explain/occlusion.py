"""Occlusion sensitivity (Zeiler and Fergus): slide a grey patch over the image and record how much the
target's score drops; captum's Occlusion does the sliding and the per-pixel averaging."""
from __future__ import annotations

import torch
from captum.attr import Occlusion
from torch import Tensor

from pipeline.analysis.explain.targets import TaskScore

GREY = 0.5                  # the patch: mid-grey in the [0, 1] input the backbone normalises
WINDOWS_PER_PASS = 16


def patch_geometry(image_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(side, stride): `patch` or a quarter of the shorter side, at least 2; windows overlap by half."""
    side = patch or max(2, min(image_size) // 4)
    return side, max(1, side // 2)


@torch.no_grad()
def occlusion_map(score: TaskScore, image: Tensor, patch: int = 0) -> Tensor:
    """[H, W]: score(image) - score(image with a grey patch there), averaged over the windows covering each
    pixel. Positive: hiding this region lowers the score."""
    side, stride = patch_geometry(tuple(image.shape[-2:]), patch)
    channels = image.shape[0]
    attribution = Occlusion(score).attribute(image[None], sliding_window_shapes=(channels, side, side),
                                             strides=(channels, stride, stride), baselines=GREY,
                                             perturbations_per_eval=WINDOWS_PER_PASS)
    return attribution[0].mean(dim=0).cpu()
