"""The shared segmentation loss: hand-computed cross-entropy, named terms, missing and ignored pixels."""
from __future__ import annotations

import math

import pytest
import torch

from support import make_batch
from datasets.sample import IGNORE_INDEX
from heads.segmentation_loss import SegmentationLoss, SegmentationLossOptions


def one_row_batch(mask_rows: list[list[int]], has_mask: list[bool]):
    batch = make_batch(size=3, batch=len(mask_rows))
    batch.mask = torch.tensor(mask_rows).view(len(mask_rows), 1, 3)
    batch.has_mask = torch.tensor(has_mask)
    return batch


def test_weighted_cross_entropy_with_ignored_pixels_by_hand():
    # Pixel 1: logits (0, ln 3) -> p(class 0) = 1/4, target 0 with weight 2; pixel 2: (0, 0), target 1 with
    # weight 1 -> p = 1/2; pixel 3 ignored. The second image has no mask: its wrong labels must not count.
    logits = torch.tensor([[0.0, 0.0, 5.0], [math.log(3), 0.0, -5.0]]).view(1, 2, 1, 3).repeat(2, 1, 1, 1)
    batch = one_row_batch([[0, 1, IGNORE_INDEX], [1, 0, 1]], has_mask=[True, False])
    loss = SegmentationLoss(2, SegmentationLossOptions(ce_weight=3.0, dice_weight=0.0, class_weights=[2.0, 1.0]))
    terms = loss(logits, batch)
    assert set(terms) == {"ce"}
    expected = 3.0 * (2 * math.log(4) + 1 * math.log(2)) / (2 + 1)
    assert math.isclose(terms["ce"].item(), expected, rel_tol=1e-5)


def test_every_weighted_term_is_named_and_ignores_images_without_mask():
    torch.manual_seed(0)
    options = SegmentationLossOptions(dice_weight=0.5, focal_weight=0.25, lovasz_weight=2.0)
    loss = SegmentationLoss(3, options)
    logits = torch.randn(2, 3, 1, 3)
    both = loss(logits, one_row_batch([[0, 1, 2], [2, 2, 0]], has_mask=[True, False]))
    first = loss(logits[:1], one_row_batch([[0, 1, 2]], has_mask=[True]))
    assert set(both) == {"ce", "dice", "focal", "lovasz"}
    for name in both:
        assert torch.allclose(both[name], first[name]), name


def test_all_pixels_ignored_gives_connected_zeros():
    logits = torch.randn(1, 3, 1, 3, requires_grad=True)
    terms = SegmentationLoss(3, SegmentationLossOptions(focal_weight=1.0))(
        logits, one_row_batch([[IGNORE_INDEX] * 3], has_mask=[True]))
    total = sum(terms.values())
    total.backward()
    assert total.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_class_weights_need_one_entry_per_class_with_background():
    with pytest.raises(ValueError, match="expected 4 entries"):
        SegmentationLoss(4, SegmentationLossOptions(class_weights=[1.0, 2.0, 3.0]))
