from __future__ import annotations

import json

import numpy as np
import torch
from pycocotools import mask as mask_utils

from datasets.coco import CocoDataset
from datasets.sample import IGNORE_INDEX
from datasets.transforms import build_transform


def test_round_trips_the_generator_annotations(shapes_annotations):
    coco = json.loads(shapes_annotations.read_text())
    dataset = CocoDataset(shapes_annotations, transform=build_transform(64, train=False))
    assert dataset.class_names == ["circle", "square", "triangle"] and dataset.category_ids == [1, 2, 3]
    assert len(dataset) == len(coco["images"])
    for index in range(len(dataset)):
        sample = dataset[index]
        anns = [a for a in coco["annotations"] if a["image_id"] == sample.image_id]
        assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.float32
        assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
        assert sample.orig_size == (64, 64)

        expected_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(sample.boxes, expected_boxes)
        assert sample.box_labels.tolist() == [a["category_id"] - 1 for a in anns]

        visible_area = {}
        for class_index, category_id in enumerate(dataset.category_ids):
            union = np.zeros((64, 64), bool)
            for a in (a for a in anns if a["category_id"] == category_id):
                union |= mask_utils.decode(a["segmentation"]).astype(bool)
            assert torch.equal(sample.mask == class_index + 1, torch.from_numpy(union))
            visible_area[class_index] = union.sum()
        assert sample.label == max(visible_area, key=visible_area.get)


def test_label_is_the_class_with_most_visible_area(tmp_path, kit):
    """Hand-computed: b (id 2) owns the largest annotation, 10x10 = 100 px, but a later square of
    a hides 16 px of it, leaving 84 visible; a totals 36 + 49 = 85 px. By visible area a wins;
    by annotation area or by largest instance b would."""
    def square(x, y, side):
        m = np.zeros((32, 32), np.uint8)
        m[y:y + side, x:x + side] = 1
        return m

    anns = [
        kit.box(1, 1, 2, [0, 0, 10, 10], segmentation=kit.rle(square(0, 0, 10))),
        kit.box(2, 1, 1, [6, 6, 6, 6], segmentation=kit.rle(square(6, 6, 6))),
        kit.box(3, 1, 1, [20, 20, 7, 7], segmentation=kit.rle(square(20, 20, 7))),
    ]
    sample = CocoDataset(kit.write(tmp_path, [kit.image(1)], anns))[0]
    assert (sample.mask == 2).sum() == 84 and (sample.mask == 1).sum() == 85
    assert sample.label == 0


def test_non_contiguous_category_ids_map_to_sorted_class_indices(tmp_path, kit):
    categories = [{"id": 9, "name": "zebra"}, {"id": 4, "name": "apple"}]
    polygon = [[2, 2, 12, 2, 12, 12, 2, 12]]
    anns = [kit.box(1, 1, 9, [2, 2, 10, 10], segmentation=polygon)]
    dataset = CocoDataset(kit.write(tmp_path, [kit.image(1)], anns, categories))
    assert dataset.class_names == ["apple", "zebra"] and dataset.category_ids == [4, 9]
    sample = dataset[0]
    assert sample.box_labels.tolist() == [1] and sample.label == 1
    assert set(sample.mask.unique().tolist()) == {0, 2}
    assert (sample.mask == 2).sum() >= 100  # the polygon is rasterised, not dropped


def test_crowd_is_ignored_in_the_mask_and_absent_from_boxes(tmp_path, kit):
    crowd = np.zeros((32, 32), np.uint8)
    crowd[16:, :] = 1
    person = np.zeros((32, 32), np.uint8)
    person[20:26, 4:10] = 1
    anns = [  # the crowd comes later in the file, yet must not hide the outlined person
        kit.box(1, 1, 1, [4, 20, 6, 6], segmentation=kit.rle(person)),
        kit.box(2, 1, 1, [0, 16, 32, 16], segmentation=kit.rle(crowd), iscrowd=1),
    ]
    sample = CocoDataset(kit.write(tmp_path, [kit.image(1)], anns))[0]
    torch.testing.assert_close(sample.boxes, torch.tensor([[4.0, 20.0, 10.0, 26.0]]))
    assert (sample.mask[:16] == 0).all()
    assert (sample.mask[20:26, 4:10] == 1).all()  # an outlined object inside a crowd keeps its class
    assert (sample.mask == IGNORE_INDEX).sum() == 32 * 16 - 36


def test_image_without_annotations_has_empty_boxes_and_no_label(tmp_path, kit):
    mask = np.zeros((32, 32), np.uint8)
    mask[:4, :4] = 1
    anns = [kit.box(1, 1, 1, [0, 0, 4, 4], segmentation=kit.rle(mask))]
    dataset = CocoDataset(kit.write(tmp_path, [kit.image(1), kit.image(2)], anns))
    empty = dataset[1]
    assert empty.image_id == 2 and empty.label is None
    assert empty.boxes.shape == (0, 4) and empty.box_labels.shape == (0,)
    assert empty.mask is not None and (empty.mask == 0).all()  # known background, not missing


def test_detection_only_dataset_has_no_masks_and_labels_by_box_area(tmp_path, kit):
    anns = [kit.box(1, 1, 1, [0, 0, 4, 4]), kit.box(2, 1, 2, [10, 10, 8, 8])]
    dataset = CocoDataset(kit.write(tmp_path, [kit.image(1)], anns))
    sample = dataset[0]
    assert sample.mask is None
    assert sample.label == 1
    assert sample.boxes.shape == (2, 4)


def test_images_root_can_differ_from_the_annotation_folder(tmp_path, kit):
    images = tmp_path / "pictures"
    kit.write_image(images / "img/1.png", 24, 40, value=200)
    path = kit.write(tmp_path / "labels", [kit.image(1, height=24, width=40)], [], create_files=False)
    sample = CocoDataset(path, images_root=images)[0]
    assert sample.orig_size == (24, 40) and sample.image.shape == (3, 24, 40)
    torch.testing.assert_close(sample.image, torch.full((3, 24, 40), 200 / 255))
