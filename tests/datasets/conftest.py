"""Tiny on-disk datasets for the datasets tests (the COCO builders are in tests/coco_kit.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from coco_kit import CocoKit
from datasets.shapes import generate_shapes


@pytest.fixture(scope="session")
def shapes_annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 64 px shapes images with several, often overlapping, shapes each."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), num_images=6, image_size=64, seed=3,
                           min_shapes=3, max_shapes=5)


@pytest.fixture
def kit() -> type[CocoKit]:
    return CocoKit
