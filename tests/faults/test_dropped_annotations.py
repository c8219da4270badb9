"""An annotation skipped as invalid (data.skip_invalid) on an image that is kept is an object whose labels are
unknown, not background: its pixels read IGNORE_INDEX, its box is an ignore region, and the image-level targets
it could have changed are missing. Ignore regions keep their class through a mixture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.coco import CocoDataset
from datasets.mixture import MixtureDataset
from datasets.sample import IGNORE_INDEX

A_SQUARE = [2, 2, 10, 2, 10, 10, 2, 10]            # the valid object: class a, pixels 2..9
B_SQUARE = [16, 16, 28, 16, 28, 28, 16, 28]        # the other object, pixels 16..27
B_BOX = [16, 16, 12, 12]


def one_image(kit, root, second: dict):
    """One 32 px image: a valid outlined object of class a, and `second` (annotation 2) over B_SQUARE."""
    valid = kit.box(1, 1, 1, [2, 2, 8, 8], segmentation=[A_SQUARE])
    return kit.write(root, [kit.image(1)], [valid, {"id": 2, "image_id": 1, "iscrowd": 0, **second}])


def b_pixels(kit, tmp_path, rle: bool) -> np.ndarray:
    """Where the second object's outline is, as the same outline reads when its annotation is valid."""
    outline = kit.rle(_square_mask()) if rle else [B_SQUARE]
    path = one_image(kit, tmp_path / "valid", {"category_id": 2, "bbox": B_BOX, "segmentation": outline})
    return CocoDataset(path).load(0).mask == 2


def _square_mask() -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[16:28, 16:28] = 1
    return mask


@pytest.mark.parametrize("second, region_labels", [
    ({"category_id": 99, "bbox": B_BOX, "segmentation": [B_SQUARE]}, [0, 1]),     # unknown class: every class
    ({"category_id": 2, "bbox": [40, 40, 5, 5], "segmentation": [B_SQUARE]}, [1]),  # box off the image
    ({"category_id": 99, "bbox": B_BOX, "segmentation": "rle"}, [0, 1]),
], ids=["polygon, unknown class", "polygon, box outside the image", "RLE, unknown class"])
def test_a_skipped_outlined_object_reads_as_ignore_not_background(tmp_path, kit, second, region_labels):
    rle = second["segmentation"] == "rle"
    if rle:
        second = {**second, "segmentation": kit.rle(_square_mask())}
    with pytest.raises(ValueError):
        CocoDataset(one_image(kit, tmp_path / "strict", second))
    dataset = CocoDataset(one_image(kit, tmp_path / "skip", second), skip_invalid=True)
    record = dataset.load(0)

    outline = b_pixels(kit, tmp_path, rle)
    assert outline.sum() > 100
    assert (record.mask[outline] == IGNORE_INDEX).all()                 # not 0: nothing says it is background
    assert (record.mask == IGNORE_INDEX).sum() == outline.sum()         # and nothing else is ignored
    assert (record.mask[2:10, 2:10] == 1).all() and record.mask[0, 31] == 0
    np.testing.assert_allclose(record.ignore_boxes, [[16, 16, 28, 28]] * len(region_labels))
    assert record.ignore_labels.tolist() == region_labels
    assert record.boxes.tolist() == [[2, 2, 10, 10]] and record.box_labels.tolist() == [0]
    assert record.label is None and record.multi_label is None          # the skipped object could change them
    assert dataset.skipped["annotations"] == 1

    sample = dataset[0]   # through the transform, as training reads it
    assert (sample.mask[torch.from_numpy(outline)] == IGNORE_INDEX).all() and len(sample.ignore_boxes) == len(region_labels)


def test_a_skipped_object_without_a_valid_outline_ignores_its_box(tmp_path, kit):
    second = {"category_id": 2, "bbox": B_BOX, "segmentation": [[1, 2, 3]]}   # a polygon of 1.5 points
    record = CocoDataset(one_image(kit, tmp_path, second), skip_invalid=True).load(0)
    box = np.zeros((32, 32), bool)
    box[16:28, 16:28] = True
    assert (record.mask[box] == IGNORE_INDEX).all() and (record.mask[~box] != IGNORE_INDEX).all()
    assert record.ignore_labels.tolist() == [1]


def test_a_skipped_object_of_unknown_place_makes_the_whole_mask_unknown(tmp_path, kit):
    second = {"category_id": 2, "bbox": [16, 16, -3, 12], "segmentation": [[1, 2, 3]]}
    record = CocoDataset(one_image(kit, tmp_path, second), skip_invalid=True).load(0)
    assert record.mask is None                                          # missing, not "all background"
    assert len(record.ignore_boxes) == 0 and record.boxes.tolist() == [[2, 2, 10, 10]]


def test_ignore_regions_keep_their_class_through_a_mixture(tmp_path, kit):
    """Source two lists only b, which is global class 1: its crowd region must say 1, as its boxes do."""
    one = kit.write(tmp_path / "one", [kit.image(1)], [kit.box(1, 1, 1, [2, 2, 8, 8])])
    two = kit.write(tmp_path / "two", [kit.image(1)], [kit.box(1, 1, 1, [2, 2, 8, 8]),
                                                       {**kit.box(2, 1, 1, [12, 12, 9, 9]), "iscrowd": 1}],
                    categories=[{"id": 1, "name": "b"}])
    mixture = MixtureDataset([CocoDataset(one), CocoDataset(two)], ["one", "two"])
    assert mixture.class_names == ["a", "b"]
    sample = mixture[1]
    assert sample.box_labels.tolist() == [1] and sample.ignore_labels.tolist() == [1]
