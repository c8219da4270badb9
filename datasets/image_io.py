"""Decode an image file to RGB uint8, the one image format every reader hands on."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

logger = logging.getLogger(__name__)
Record = TypeVar("Record")


def load_rgb(path: Path) -> np.ndarray:
    """Return HxWx3 uint8 RGB; grey, 16-bit and RGBA files are converted. Raises ValueError if undecodable."""
    # IMREAD_COLOR always yields 3-channel 8-bit BGR, whatever the file stores.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: could not decode the file as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def first_readable(index: int, count: int, read: Callable[[int], Record], skip_invalid: bool,
                   skipped: dict[str, int], root: Path) -> Record:
    """`read(index)`; when that image cannot be decoded (ValueError), raise, or with skip_invalid count it in
    skipped["images"], log it and read the next one instead, so a sample is never silently lost."""
    for attempt in range(count):
        position = (index + attempt) % count
        try:
            return read(position)
        except ValueError as error:
            if not skip_invalid:
                raise
            skipped["images"] += 1
            logger.warning("skipping an unreadable image: %s", error)
    raise ValueError(f"{root}: no image could be read")
