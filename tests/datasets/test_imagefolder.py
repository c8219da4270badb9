from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.collate import collate
from datasets.imagefolder import ImageFolderDataset


def write_tree(root, counts: dict[str, int]) -> None:
    for value, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((8, 10, 3), 40 * value, np.uint8))


def test_labels_follow_sorted_folder_names_and_other_targets_are_missing(tmp_path):
    write_tree(tmp_path, {"zebra": 2, "ant": 1})
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.class_names == ["ant", "zebra"] and len(dataset) == 3
    batch = collate([dataset[i] for i in range(3)])
    assert batch.label.tolist() == [0, 1, 1] and batch.has_label.all()
    assert not batch.has_mask.any() and not batch.has_boxes.any()
    assert batch.orig_size.tolist() == [[8, 10]] * 3


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    write_tree(tmp_path / "data", {"a": 1})
    outside = tmp_path / "secret.png"
    cv2.imwrite(str(outside), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "data/a/link.png").symlink_to(outside)
    with pytest.raises(ValueError, match="link.png: resolves outside the dataset root"):
        ImageFolderDataset(tmp_path / "data")


def test_unreadable_image_fails_or_is_skipped_and_counted(tmp_path):
    write_tree(tmp_path, {"a": 2})
    (tmp_path / "a/0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="0.png: could not decode"):
        ImageFolderDataset(tmp_path)[0]
    dataset = ImageFolderDataset(tmp_path, skip_invalid=True)
    assert dataset[0].image.shape == (3, 8, 10) and dataset.skipped == {"images": 1}
