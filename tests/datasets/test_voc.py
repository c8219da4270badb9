from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from datasets.build import ReadOptions, build_dataset
from datasets.coco import CocoDataset
from datasets.transforms import AugmentOptions
from datasets.voc import VocDataset

# Per image id: (height, width, objects as (name, xmin, ymin, xmax, ymax in VOC's 1-based inclusive pixels,
# difficult)). Image 1's second box ends on the border; image 3 has no objects.
IMAGES = {
    "img1": (24, 40, [("dog", 5, 3, 24, 14, 0), ("cat", 11, 9, 40, 24, 0), ("dog", 1, 1, 6, 6, 1)]),
    "img2": (32, 32, [("cat", 1, 1, 32, 32, 0), ("cat", 3, 4, 10, 12, 1)]),
    "img3": (16, 24, []),
}


def write_noise(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def voc_xml(filename, height, width, objects):
    parts = [f"<annotation><folder>VOC2012</folder><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root, images=IMAGES, splits=None):
    """root/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}, and the same objects as root/coco.json
    (VOC box -> COCO [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]; difficult -> iscrowd)."""
    splits = splits or {"train": list(images)}
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
    names = sorted({obj[0] for _, _, objects in images.values() for obj in objects})
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for image_id, (stem, (height, width, objects)) in enumerate(images.items()):
        write_noise(root / f"JPEGImages/{stem}.jpg", height, width, seed=image_id)
        (root / f"Annotations/{stem}.xml").write_text(voc_xml(f"{stem}.jpg", height, width, objects))
        coco["images"].append({"id": image_id, "file_name": f"JPEGImages/{stem}.jpg", "height": height,
                               "width": width})
        for name, xmin, ymin, xmax, ymax, difficult in objects:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": names.index(name) + 1,
                "bbox": [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], "iscrowd": difficult})
    for split, stems in splits.items():
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(stems) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    return root / "ImageSets/Main/train.txt"


def assert_same_sample(got, expected):
    assert got.image_id == expected.image_id and got.orig_size == expected.orig_size
    assert torch.equal(got.image, expected.image)
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=1e-4)
    assert torch.equal(got.box_labels, expected.box_labels)
    torch.testing.assert_close(got.ignore_boxes, expected.ignore_boxes, rtol=0, atol=1e-4)
    assert torch.equal(got.ignore_labels, expected.ignore_labels)
    assert got.mask is None and expected.mask is None
    assert got.label == expected.label and torch.equal(got.multi_label, expected.multi_label)


def test_reads_the_same_samples_as_the_equivalent_coco_file(tmp_path):
    dataset = VocDataset(write_voc(tmp_path))
    coco = CocoDataset(tmp_path / "coco.json")
    assert dataset.class_names == coco.class_names == ["cat", "dog"] and dataset.category_ids == [1, 2]
    assert len(dataset) == len(coco) == 3
    for index in range(3):
        assert_same_sample(dataset[index], coco[index])
    first = dataset[0]  # 1-based inclusive -> 0-based edges, by hand: (5, 3, 24, 14) -> (4, 2, 24, 14)
    torch.testing.assert_close(first.boxes, torch.tensor([[4.0, 2.0, 24.0, 14.0], [10.0, 8.0, 40.0, 24.0]]))
    torch.testing.assert_close(first.ignore_boxes, torch.tensor([[0.0, 0.0, 6.0, 6.0]]))  # the difficult dog
    assert first.box_labels.tolist() == [1, 0] and first.ignore_labels.tolist() == [1]
    assert first.label == 0 and first.multi_label.tolist() == [1.0, 1.0]
    assert dataset[2].boxes.shape == (0, 4) and dataset[2].label is None
    ours, theirs = dataset.annotation_index(), coco.annotation_index()  # what check-data counts without decoding
    assert {k: v.tolist() for k, v in ours.counts.items()} == {k: v.tolist() for k, v in theirs.counts.items()}
    assert ours.unlabelled == theirs.unlabelled == [2]


def test_build_dataset_resizes_like_coco_and_a_voc_root_folder_picks_the_split(tmp_path):
    write_voc(tmp_path, splits={"train": ["img1", "img2"], "val": ["img1"]})
    options = ReadOptions(image_size=32, augment=AugmentOptions())
    got = build_dataset("voc", tmp_path, None, train=False, options=options, split="val")
    expected = build_dataset("coco", tmp_path / "coco.json", None, train=False, options=options)
    assert len(got) == 1 and got[0].image.shape == (3, 32, 32)
    assert_same_sample(got[0], expected[0])


def test_a_validation_split_keeps_the_training_class_indices(tmp_path):
    write_voc(tmp_path, splits={"train": ["img1", "img2"], "val": ["img3", "img2"]})
    train = VocDataset(tmp_path / "ImageSets/Main/train.txt", split="train")
    (tmp_path / "Annotations/img2.xml").write_text(voc_xml("img2.jpg", 32, 32, [("dog", 1, 1, 8, 8, 0)]))
    val_path = tmp_path / "ImageSets/Main/val.txt"
    assert VocDataset(val_path).class_names == ["dog"]  # its own objects alone: dog would be class 0
    val = VocDataset(val_path, split="val", class_names=train.class_names)
    assert val.class_names == ["cat", "dog"] and val[1].box_labels.tolist() == [1]
    assert val[1].multi_label.tolist() == [0.0, 1.0]


def test_a_class_list_file_fixes_the_order_and_an_unknown_class_is_an_error_or_skip(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    dataset = VocDataset(tmp_path / "ImageSets/Main/train.txt")
    assert dataset.class_names == ["dog", "cat"] and dataset[0].box_labels.tolist() == [0, 1]
    (tmp_path / "classes.txt").write_text("dog\n")
    with pytest.raises(ValueError, match=r"img1\.xml: object\[1\]\.name: expected one of the classes \['dog'\], "
                                         r"got 'cat'"):
        VocDataset(tmp_path / "ImageSets/Main/train.txt")
    skipping = VocDataset(tmp_path / "ImageSets/Main/train.txt", skip_invalid=True)
    assert len(skipping) == 1 and skipping.skipped["images"] == 2


def test_a_folder_of_xmls_beside_pngs_named_as_tifs(tmp_path):
    """deepforest's data: OSBS_029.xml beside OSBS_029.png, its <filename> still naming the original .tif."""
    write_noise(tmp_path / "OSBS_029.png", 20, 30, seed=4)
    (tmp_path / "OSBS_029.xml").write_text(voc_xml("OSBS_029.tif", 20, 30, [("Tree", 2, 3, 12, 18, 0)]))
    (tmp_path / "notes.csv").write_text("not,an,annotation\n")
    dataset = VocDataset(tmp_path)
    assert dataset.class_names == ["Tree"] and dataset.image_path(0).name == "OSBS_029.png"
    sample = dataset[0]
    assert sample.orig_size == (20, 30)
    torch.testing.assert_close(sample.boxes, torch.tensor([[1.0, 2.0, 12.0, 18.0]]))


@pytest.mark.parametrize("filename", ["../outside.jpg", "/tmp/outside.jpg", "sub/../../outside.jpg"])
def test_a_filename_out_of_the_images_folder_is_refused_or_skipped(tmp_path, filename):
    write_voc(tmp_path / "voc")
    write_noise(tmp_path / "outside.jpg", 24, 40, seed=0)
    (tmp_path / "voc/Annotations/img1.xml").write_text(voc_xml(filename, 24, 40, []))
    with pytest.raises(ValueError, match=r"img1\.xml: filename: expected an image path inside .*JPEGImages"):
        VocDataset(tmp_path / "voc/ImageSets/Main/train.txt")
    dataset = VocDataset(tmp_path / "voc/ImageSets/Main/train.txt", skip_invalid=True)
    assert len(dataset) == 2 and dataset.skipped["images"] == 1


@pytest.mark.parametrize("objects, message", [
    ([("cat", 10, 3, 10, 9, 0)], r"object\[0\]\.bndbox: expected xmax > xmin and ymax > ymin"),
    ([("cat", 50, 3, 60, 9, 0)], r"object\[0\]\.bndbox: expected a box overlapping the 40x24 image"),
    ([("cat", 1, "x", 5, 9, 0)], r"object\[0\]\.bndbox\.ymin: expected a number, got 'x'"),
    ([("cat", 1, 1, 5, 9, 2)], r"object\[0\]\.difficult: expected 0 or 1, got '2'"),
    ([("", 1, 1, 5, 9, 0)], r"object\[0\]\.name: expected a class name"),
])
def test_a_bad_object_names_the_file_and_field(tmp_path, objects, message):
    write_voc(tmp_path)
    (tmp_path / "Annotations/img1.xml").write_text(voc_xml("img1.jpg", 24, 40, objects))
    with pytest.raises(ValueError, match=r"img1\.xml: " + message):
        VocDataset(tmp_path / "ImageSets/Main/train.txt")


def test_boxes_are_clipped_to_the_image_and_sizes_are_checked(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "Annotations/img1.xml").write_text(voc_xml("img1.jpg", 24, 40, [("cat", 30, 20, 45, 30, 0)]))
    dataset = VocDataset(tmp_path / "ImageSets/Main/train.txt")
    torch.testing.assert_close(dataset[0].boxes, torch.tensor([[29.0, 19.0, 40.0, 24.0]]))
    np.testing.assert_allclose(dataset.box_sizes()[0], [11, 5, 40, 24])
    (tmp_path / "Annotations/img1.xml").write_text(voc_xml("img1.jpg", 40, 24, []))
    with pytest.raises(ValueError, match=r"img1\.xml: size: expected a 24x40 image as declared, decoded 40x24"):
        VocDataset(tmp_path / "ImageSets/Main/train.txt")[0]


def test_malformed_xml_and_a_missing_listed_id_are_named(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "Annotations/img2.xml").write_text("<annotation><size>")
    with pytest.raises(ValueError, match=r"img2\.xml: expected Pascal VOC XML"):
        VocDataset(tmp_path / "ImageSets/Main/train.txt")
    (tmp_path / "ImageSets/Main/train.txt").write_text("img1\nimg9\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt: line 2: expected .*Annotations/img9\.xml, not found"):
        VocDataset(tmp_path / "ImageSets/Main/train.txt")
