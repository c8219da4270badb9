"""Decode an image file to RGB uint8, the one image format every reader hands on."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def load_rgb(path: Path) -> np.ndarray:
    """Return HxWx3 uint8 RGB; grey, 16-bit and RGBA files are converted. Raises ValueError if undecodable."""
    # IMREAD_COLOR always yields 3-channel 8-bit BGR, whatever the file stores.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: could not decode the file as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
