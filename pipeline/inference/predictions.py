"""What `predict` hands to its writers: one image's predictions, every task in the coordinates of the file.

Per head kind (heads/base.py):
- "classification": `probabilities` [C] (softmax, or per-class sigmoid for multi-label heads)
- "segmentation":   `mask` [H, W] int64 class index, 0 = background, class k = class_names[k - 1]
- "detection":      `boxes` [K, 4] xyxy pixels of the file, `scores` [K], `labels` [K] int64 (0-based class index)
- "reconstruction": `image` [H, W, C] float32 in [0, 1]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class InputImage:
    path: Path      # the file as found
    name: str       # unique in the run, relative, without suffix ("tile_003", "site_b/tile_003"): output file names


@dataclass
class TaskPrediction:
    kind: str
    probabilities: np.ndarray | None = None
    mask: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    image: np.ndarray | None = None


@dataclass
class ImagePrediction:
    source: InputImage
    size: tuple[int, int]                     # (height, width) of the image on disk (after EXIF orientation)
    image: np.ndarray                         # [H, W, C] float32 in [0, 1], as the model read it: for overlays
    tasks: dict[str, TaskPrediction] = field(default_factory=dict)
