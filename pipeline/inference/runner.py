"""What runs a trained network for inference: the PyTorch model itself, or an exported file in its runtime.

A runner maps a batch of images to each head's raw eval outputs (what `head.decode` takes), so TTA, ensembles,
tiling and every output format sit on top of any runtime unchanged. `MultiTaskModel` in eval mode is one.
"""
from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn


class Runner(Protocol):
    heads: nn.ModuleDict   # task -> Head: its kind, decode and options (thresholds, anchors)

    def __call__(self, image: Tensor) -> dict[str, Any]:
        """`image` float32 [B, C, H, W] in [0, 1] -> each head's raw outputs by task name."""
        ...
