"""Statistics of a training set that a head may fit itself to before training (e.g. YOLO's auto anchors).

Read from the annotations alone, without decoding images or augmenting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass
class DataSummary:
    image_size: int          # the network input is image_size x image_size
    num_classes: int
    box_sizes: Tensor        # [N, 2] float (w, h) of every training box in network-input pixels


def summarize(dataset: Dataset, image_size: int, resize: str = "stretch") -> DataSummary:
    """Readers that know boxes expose `box_sizes()`: [N, 4] (w, h, image_w, image_h) in pixels on disk."""
    sizes = dataset.box_sizes() if hasattr(dataset, "box_sizes") else np.zeros((0, 4), np.float32)
    sizes = np.asarray(sizes, np.float32).reshape(-1, 4)
    scaled = input_box_sizes(sizes, image_size, resize)
    return DataSummary(image_size=image_size, num_classes=len(dataset.class_names),
                       box_sizes=torch.from_numpy(np.ascontiguousarray(scaled)))


def input_box_sizes(sizes: np.ndarray, image_size: int, resize: str) -> np.ndarray:
    """Box (w, h) on disk -> in network-input pixels, as the validation transform resizes: `stretch` scales
    each axis to the square, `letterbox` both by the longer side."""
    if resize == "letterbox":
        return sizes[:, :2] * image_size / sizes[:, 2:].max(axis=1, keepdims=True)
    return sizes[:, :2] * image_size / sizes[:, 2:]
