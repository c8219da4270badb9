from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.build import ReadOptions, build_dataset
from datasets.collate import collate
from datasets.images import ImageOnlyDataset
from datasets.transforms import AugmentOptions


def write_images(root, names: list[str]) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((8, 10, 3), 20 * i, np.uint8))


def test_every_image_under_the_root_sorted_by_path_with_every_target_missing(tmp_path):
    write_images(tmp_path, ["b.png", "a/z.jpg", "a/y.JPG", ".hidden/x.png", ".x.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = ImageOnlyDataset(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.files] == ["a/y.JPG", "a/z.jpg", "b.png"]
    assert dataset.class_names == [] and dataset.category_ids == []
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.image.shape == (3, 3, 8, 10) and batch.orig_size.tolist() == [[8, 10]] * 3
    for flag in (batch.has_label, batch.has_mask, batch.has_boxes, batch.has_multi_label):
        assert not flag.any()


def test_build_dataset_reads_the_images_format_at_the_requested_size(tmp_path):
    write_images(tmp_path, ["a.png"])
    sample = build_dataset("images", tmp_path, None, train=True, options=ReadOptions(16, AugmentOptions()))[0]
    assert sample.image.shape == (3, 16, 16) and sample.mask is None and sample.boxes is None


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.md").write_text("")
    with pytest.raises(ValueError, match="expected image files .*found none"):
        ImageOnlyDataset(tmp_path)


def test_unreadable_image_fails_or_is_skipped_and_counted(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png: could not decode"):
        ImageOnlyDataset(tmp_path)[0]
    dataset = ImageOnlyDataset(tmp_path, skip_invalid=True)
    assert dataset[0].image.shape == (3, 8, 10) and dataset.skipped == {"images": 1}


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    write_images(tmp_path / "data", ["a.png"])
    write_images(tmp_path, ["secret.png"])
    (tmp_path / "data/link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="link.png: resolves outside the dataset root"):
        ImageOnlyDataset(tmp_path / "data")
