from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.build import ReadOptions, build_dataset
from datasets.collate import collate
from datasets.masks import MaskFolderDataset
from datasets.sample import IGNORE_INDEX
from datasets.transforms import AugmentOptions


def write_mask_folder(root, masks: dict[str, np.ndarray], classes=("cat", "dog"), image_suffix=".jpg"):
    """root/images/<name><suffix> (grey, the mask's size), root/masks/<name>.png, root/classes.txt."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for name, mask in masks.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{name}{image_suffix}"), np.full((*mask.shape, 3), 90, np.uint8))
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def quadrants(values=(0, 1, 2, IGNORE_INDEX), size=(8, 10)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    h, w = size[0] // 2, size[1] // 2
    mask[:h, :w], mask[:h, w:], mask[h:, :w], mask[h:, w:] = values
    return mask


def test_reads_masks_with_classes_from_classes_txt_and_nothing_else(tmp_path):
    mask = quadrants()
    write_mask_folder(tmp_path, {"b": mask, "sub/a": mask[::-1].copy()})
    dataset = MaskFolderDataset(tmp_path)
    assert dataset.class_names == ["cat", "dog"] and dataset.category_ids == [1, 2]
    assert [image.name for image, _ in dataset.pairs] == ["b.jpg", "a.jpg"]  # sorted by path: b < sub/a
    sample = dataset[0]
    assert sample.mask.dtype == torch.int64 and np.array_equal(sample.mask.numpy(), mask)
    assert sample.label is None and sample.boxes is None and sample.multi_label is None
    batch = collate([dataset[0], dataset[1]])
    assert batch.has_mask.all() and not batch.has_label.any() and not batch.has_boxes.any()
    assert not batch.has_multi_label.any()


def test_palette_masks_are_read_as_their_indices(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants()})
    palette = Image.fromarray(quadrants()).convert("P")  # indices keep the values, colours are the palette's
    palette.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [255, 255, 255] * 253)
    palette.save(tmp_path / "masks/a.png")
    assert np.array_equal(MaskFolderDataset(tmp_path)[0].mask.numpy(), quadrants())


def test_build_dataset_resizes_image_and_mask_together(tmp_path):
    write_mask_folder(tmp_path, {"a": np.kron(quadrants(size=(4, 4)), np.ones((8, 8), np.uint8))})
    sample = build_dataset("masks", tmp_path, None, train=False, options=ReadOptions(16, AugmentOptions()))[0]
    assert sample.image.shape == (3, 16, 16) and sample.mask.shape == (16, 16)
    assert sample.mask[0, 0] == 0 and sample.mask[0, 15] == 1 and sample.mask[15, 0] == 2
    assert sample.mask[15, 15] == IGNORE_INDEX and sample.orig_size == (32, 32)


def test_a_mask_value_beyond_the_classes_is_an_error_naming_the_file_or_a_counted_skip(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants(values=(0, 1, 3, 7)), "b": quadrants()})
    with pytest.raises(ValueError, match=r"a\.png: expected pixel values 0 .*1\.\.2 .*found \[3, 7\]"):
        MaskFolderDataset(tmp_path)[0]
    dataset = MaskFolderDataset(tmp_path, skip_invalid=True)
    assert np.array_equal(dataset[0].mask.numpy(), quadrants())  # replaced by the next valid pair
    assert dataset.skipped["images"] == 1


def test_a_mask_of_another_size_than_its_image_is_an_error(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants()})
    Image.fromarray(quadrants(size=(6, 6))).save(tmp_path / "masks/a.png")
    with pytest.raises(ValueError, match=r"a\.png: expected the size of its image a\.jpg, 10x8, got 6x6"):
        MaskFolderDataset(tmp_path)[0]


def test_a_colour_mask_is_an_error_naming_the_colour_format(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants()})
    colour = np.zeros((8, 10, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "masks/a.png")
    with pytest.raises(ValueError, match=r"a\.png: expected a single-channel integer mask .*palette_masks"):
        MaskFolderDataset(tmp_path)[0]


def test_a_grey_mask_saved_with_three_equal_channels_reads_as_grey(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants()})
    Image.fromarray(np.repeat(quadrants()[..., None], 3, axis=2)).save(tmp_path / "masks/a.png")
    assert np.array_equal(MaskFolderDataset(tmp_path)[0].mask.numpy(), quadrants())


def test_missing_and_orphan_masks_are_errors_or_counted_skips(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants(), "b": quadrants(), "c": quadrants()})
    (tmp_path / "masks/a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.jpg: expected its mask .*masks/a\.png"):
        MaskFolderDataset(tmp_path)
    (tmp_path / "images/c.jpg").unlink()
    dataset = MaskFolderDataset(tmp_path, skip_invalid=True)
    assert [image.name for image, _ in dataset.pairs] == ["b.jpg"]
    assert dataset.skipped == {"images": 1, "masks": 1}


@pytest.mark.parametrize("text, message", [
    ("cat\n\ndog\n", "line 2: expected a class name, got an empty line"),
    ("cat\ndog\nCat\n", "line 3: expected unique class names, 'Cat' repeats line 1"),
    ("\n", "expected at least one class name"),
])
def test_a_bad_class_list_is_an_error_naming_the_line(tmp_path, text, message):
    write_mask_folder(tmp_path, {"a": quadrants()})
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        MaskFolderDataset(tmp_path)


def test_two_images_for_one_mask_name_are_an_error(tmp_path):
    write_mask_folder(tmp_path, {"a": quadrants()})
    cv2.imwrite(str(tmp_path / "images/a.png"), np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="expected one image per name"):
        MaskFolderDataset(tmp_path)


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    write_mask_folder(tmp_path / "data", {"a": quadrants()})
    Image.fromarray(quadrants()).save(tmp_path / "elsewhere.png")
    (tmp_path / "data/masks/a.png").unlink()
    (tmp_path / "data/masks/a.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(ValueError, match="a.png: resolves outside the dataset root"):
        MaskFolderDataset(tmp_path / "data")


def test_a_missing_layout_folder_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"masks: expected a folder \(mask-folder layout"):
        MaskFolderDataset(tmp_path)


@pytest.mark.parametrize("classes, expected", [(None, ["foreground"]), (["lesion"], ["lesion"])])
def test_binary_0_255_masks_read_255_as_the_one_class(tmp_path, classes, expected):
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 255
    write_mask_folder(tmp_path, {"a": mask, "b": np.zeros((8, 10), np.uint8)}, classes=classes or ["unused"])
    if classes is None:
        (tmp_path / "classes.txt").unlink()
    dataset = MaskFolderDataset(tmp_path)
    assert dataset.class_names == expected and dataset.category_ids == [1]
    assert np.array_equal(dataset[0].mask.numpy(), (mask == 255).astype(np.uint8))  # class 1, not ignore


def test_a_one_class_mask_with_class_values_keeps_255_as_ignore(tmp_path):
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7], mask[6:, :] = 1, 255
    write_mask_folder(tmp_path, {"a": mask}, classes=["lesion"])
    assert np.array_equal(MaskFolderDataset(tmp_path)[0].mask.numpy(), mask)
