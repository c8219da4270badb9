from __future__ import annotations

import pytest
import torch

from datasets.collate import collate
from datasets.sample import IGNORE_INDEX, Sample


def _sample(image_id: int, **targets) -> Sample:
    return Sample(image=torch.full((3, 8, 8), image_id / 10), image_id=image_id, orig_size=(20, 30), **targets)


def test_missing_targets_are_marked_and_empty_boxes_stay_distinct():
    mask = torch.randint(0, 3, (8, 8))
    full = _sample(1, label=2, mask=mask, boxes=torch.tensor([[0.0, 0, 4, 4], [1, 1, 2, 2]]),
                   box_labels=torch.tensor([1, 0]))
    bare = _sample(2)
    no_objects = _sample(3, label=0, mask=torch.zeros(8, 8, dtype=torch.int64),
                         boxes=torch.zeros(0, 4), box_labels=torch.zeros(0, dtype=torch.int64))
    batch = collate([full, bare, no_objects])

    assert batch.image.shape == (3, 3, 8, 8) and torch.equal(batch.image[1], bare.image)
    assert batch.image_id.tolist() == [1, 2, 3] and batch.image_id.dtype == torch.int64
    assert batch.orig_size.tolist() == [[20, 30]] * 3
    assert batch.label.tolist() == [2, 0, 0] and batch.has_label.tolist() == [True, False, True]
    assert batch.has_mask.tolist() == [True, False, True]
    assert torch.equal(batch.mask[0], mask) and (batch.mask[1] == IGNORE_INDEX).all() and (batch.mask[2] == 0).all()
    assert batch.mask.dtype == torch.int64
    assert batch.has_boxes.tolist() == [True, False, True]
    assert [b.shape for b in batch.boxes] == [(2, 4), (0, 4), (0, 4)]
    assert [b.tolist() for b in batch.box_labels] == [[1, 0], [], []]
    assert batch.box_labels[1].dtype == torch.int64


def test_a_batch_without_any_mask_is_all_ignore():
    batch = collate([_sample(1), _sample(2)])
    assert batch.mask.shape == (2, 8, 8) and (batch.mask == IGNORE_INDEX).all()
    assert not batch.has_mask.any() and not batch.has_boxes.any() and not batch.has_label.any()


def test_images_of_different_sizes_are_a_clear_error():
    odd = Sample(image=torch.zeros(3, 9, 8), image_id=5, orig_size=(9, 8))
    with pytest.raises(ValueError, match="one shape"):
        collate([_sample(1), odd])
