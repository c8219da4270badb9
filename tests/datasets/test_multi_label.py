"""The multi-hot image target: read from COCO and image folders, kept by transforms, collated with a missing flag."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datasets.coco import CocoDataset
from datasets.collate import collate
from datasets.imagefolder import ImageFolderDataset
from datasets.sample import Sample
from datasets.transforms import build_transform


def _sample(image_id: int, multi_label: torch.Tensor | None = None) -> Sample:
    return Sample(image=torch.zeros(3, 8, 8), image_id=image_id, orig_size=(8, 8), multi_label=multi_label)


def test_coco_multi_hot_counts_non_crowd_classes_and_an_empty_image_is_all_zero(tmp_path, kit):
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    anns = [
        kit.box(1, 1, 1, [0, 0, 4, 4]), kit.box(2, 1, 1, [8, 8, 4, 4]),  # two objects of one class: still 1
        kit.box(3, 1, 3, [10, 0, 4, 4]),
        kit.box(4, 1, 2, [0, 10, 8, 8], iscrowd=1),  # a crowd alone does not make its class present
    ]
    dataset = CocoDataset(kit.write(tmp_path, [kit.image(1), kit.image(2)], anns, categories),
                          transform=build_transform(16, train=True))
    assert dataset[0].multi_label.tolist() == [1.0, 0.0, 1.0]
    empty = dataset[1].multi_label
    assert empty is not None and empty.tolist() == [0.0, 0.0, 0.0]  # known "nothing", not missing
    assert empty.dtype == torch.float32


def test_image_folder_multi_label_is_the_one_hot_of_its_folder(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), np.zeros((8, 8, 3), np.uint8))
    batch = collate([ImageFolderDataset(tmp_path)[i] for i in range(2)])
    assert batch.multi_label.tolist() == [[1.0, 0.0], [0.0, 1.0]] and batch.has_multi_label.all()


def test_collate_marks_missing_multi_labels_and_to_moves_them():
    batch = collate([_sample(1, torch.tensor([0.0, 1.0, 1.0])), _sample(2), _sample(3, torch.zeros(3))])
    assert batch.has_multi_label.tolist() == [True, False, True]
    assert batch.multi_label.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    moved = batch.to("cpu")
    assert torch.equal(moved.multi_label, batch.multi_label) and torch.equal(moved.has_multi_label, batch.has_multi_label)


def test_collate_without_multi_labels_and_a_class_count_mismatch():
    batch = collate([_sample(1), _sample(2)])
    assert batch.multi_label.shape == (2, 0) and not batch.has_multi_label.any()
    with pytest.raises(ValueError, match="class count"):
        collate([_sample(1, torch.zeros(2)), _sample(2, torch.zeros(3))])
