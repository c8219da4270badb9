"""Fixtures of the bad-input corpus: the tiny COCO builders (tests/coco_kit.py)."""
from __future__ import annotations

import pytest

from coco_kit import CocoKit


@pytest.fixture
def kit() -> type[CocoKit]:
    return CocoKit
