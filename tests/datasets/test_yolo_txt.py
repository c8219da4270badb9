from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datasets.build import ReadOptions, build_dataset
from datasets.coco import CocoDataset
from datasets.transforms import AugmentOptions
from datasets.yolo_txt import YoloTxtDataset, label_path

NAMES = ["cat", "dog"]
# Per image (name, height, width): objects as (class, polygon in pixels). The triangle overlaps the rectangle,
# so drawing order matters; "c" has no label file (background). Sizes are not square, to catch w/h swaps.
IMAGES = [("a", 24, 40), ("b", 32, 32), ("c", 16, 24)]
OBJECTS = {
    "a": [(0, [4, 2, 24, 2, 24, 14, 4, 14]), (1, [10, 8, 40, 24, 10, 24])],
    "b": [(1, [3, 5, 20, 9, 6, 30]), (1, [0, 0, 8, 0, 8, 8, 0, 8])],
}


def extent(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def write_noise(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def yolo_line(cls, polygon, height, width, seg):
    if seg:
        return " ".join([str(cls)] + [repr(v / (width if i % 2 == 0 else height)) for i, v in enumerate(polygon)])
    x1, y1, x2, y2 = extent(polygon)
    return f"{cls} {(x1 + x2) / 2 / width!r} {(y1 + y2) / 2 / height!r} {(x2 - x1) / width!r} {(y2 - y1) / height!r}"


def write_yolo(root, seg=True, names=NAMES, split="val"):
    """root/data.yaml, root/images/<split>/*.png, root/labels/<split>/*.txt, and the same as root/coco.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"train": f"images/{split}", "val": f"images/{split}",
                                                    "names": names}))
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}
    for image_id, (name, height, width) in enumerate(IMAGES):
        write_noise(root / f"images/{split}/{name}.png", height, width, seed=image_id)
        coco["images"].append({"id": image_id, "file_name": f"images/{split}/{name}.png", "height": height,
                               "width": width})
        if name not in OBJECTS:
            continue
        label = root / f"labels/{split}/{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(yolo_line(c, p, height, width, seg) for c, p in OBJECTS[name]) + "\n")
        for cls, polygon in OBJECTS[name]:
            x1, y1, x2, y2 = extent(polygon)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": cls + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
                                        **({"segmentation": [polygon]} if seg else {})})
    (root / "coco.json").write_text(json.dumps(coco))
    return root / "data.yaml"


def assert_same_sample(got, expected):
    assert got.image_id == expected.image_id and got.orig_size == expected.orig_size
    assert torch.equal(got.image, expected.image)
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=1e-4)  # normalised floats: rounding
    assert torch.equal(got.box_labels, expected.box_labels)
    assert torch.equal(got.ignore_boxes, expected.ignore_boxes)
    assert torch.equal(got.ignore_labels, expected.ignore_labels)
    assert (got.mask is None) == (expected.mask is None)
    assert got.mask is None or torch.equal(got.mask, expected.mask)
    assert got.label == expected.label and torch.equal(got.multi_label, expected.multi_label)


@pytest.mark.parametrize("seg", [True, False])
def test_reads_the_same_samples_as_the_equivalent_coco_file(tmp_path, seg):
    """Polygons are rasterised like pycocotools does, so even the triangles' edge pixels agree exactly."""
    dataset = YoloTxtDataset(write_yolo(tmp_path, seg=seg), split="val")
    coco = CocoDataset(tmp_path / "coco.json")
    assert dataset.class_names == coco.class_names == NAMES and dataset.category_ids == [1, 2]
    assert len(dataset) == len(coco) == 3 and dataset.has_masks == seg
    for index in range(3):
        assert_same_sample(dataset[index], coco[index])
    assert (dataset[0].mask is not None) == seg
    background = dataset[2]  # no label file: an image without objects
    assert background.boxes.shape == (0, 4) and background.label is None and not background.multi_label.any()
    assert not seg or (background.mask == 0).all()
    ours, theirs = dataset.annotation_index(), coco.annotation_index()  # what check-data counts without decoding
    assert ours.counts["boxes"].tolist() == theirs.counts["boxes"].tolist() and ours.unlabelled == theirs.unlabelled


def test_build_dataset_resizes_like_coco(tmp_path):
    data = write_yolo(tmp_path)
    options = ReadOptions(image_size=32, augment=AugmentOptions())
    got = build_dataset("yolo", data, None, train=False, options=options, split="val")[0]
    expected = build_dataset("coco", tmp_path / "coco.json", None, train=False, options=options)[0]
    assert got.image.shape == (3, 32, 32) and got.orig_size == (24, 40)
    assert_same_sample(got, expected)


def test_a_polygon_covers_exactly_the_pixels_of_its_box(tmp_path):
    """cv2.fillPoly would fill 11x11 pixels for a 10x10 square from (2, 2) to (12, 12)."""
    write_noise(tmp_path / "images/train/a.png", 32, 32, seed=0)
    (tmp_path / "labels/train").mkdir(parents=True)
    (tmp_path / "labels/train/a.txt").write_text("0 0.0625 0.0625 0.375 0.0625 0.375 0.375 0.0625 0.375\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [thing]\n")
    sample = YoloTxtDataset(tmp_path / "data.yaml")[0]
    torch.testing.assert_close(sample.boxes, torch.tensor([[2.0, 2.0, 12.0, 12.0]]))
    assert (sample.mask == 1).sum() == 100 and (sample.mask[2:12, 2:12] == 1).all()


def test_names_as_a_dict_path_and_nested_folders(tmp_path):
    root = tmp_path / "dataset"
    write_noise(root / "images/train/deep/er/x.png", 16, 16, seed=1)
    (root / "labels/train/deep/er").mkdir(parents=True)
    (root / "labels/train/deep/er/x.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/data.yaml").write_text(
        "path: ../dataset\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    dataset = YoloTxtDataset(tmp_path / "configs/data.yaml", split="train")
    assert dataset.class_names == ["cat", "dog"]
    torch.testing.assert_close(dataset[0].boxes, torch.tensor([[4.0, 6.0, 12.0, 10.0]]))
    assert dataset[0].box_labels.tolist() == [1] and dataset[0].mask is None


def test_the_label_path_replaces_the_last_images_component():
    assert label_path(Path("/d/images/train/sub/x.jpg")) == Path("/d/labels/train/sub/x.txt")
    assert label_path(Path("/images/d/images/train/x.v1.png")) == Path("/images/d/labels/train/x.v1.txt")
    assert label_path(Path("/d/train/x.png")) == Path("/d/train/x.txt")  # no images folder: beside the image


def test_an_image_list_and_roboflow_style_paths(tmp_path):
    write_yolo(tmp_path, split="valid")
    (tmp_path / "val.txt").write_text("./images/valid/b.png\n\nimages/valid/a.png\n")
    (tmp_path / "data.yaml").write_text(f"train: ../valid/images\nval: val.txt\nnames: {NAMES}\n")
    (tmp_path / "valid/images").mkdir(parents=True)  # Roboflow: ../valid/images means valid/images here
    write_noise(tmp_path / "valid/images/z.png", 8, 8, seed=5)
    listed = YoloTxtDataset(tmp_path / "data.yaml", split="val")
    assert [p.name for p in listed.images] == ["a.png", "b.png"]  # sorted, as Ultralytics
    assert listed[1].box_labels.tolist() == [1, 1]
    assert [p.name for p in YoloTxtDataset(tmp_path / "data.yaml", split="train").images] == ["z.png"]


@pytest.mark.parametrize("line", ["../outside.png", "/etc/passwd.png", "images/../../outside.png"])
def test_an_image_list_path_out_of_the_root_is_refused_or_skipped(tmp_path, line):
    write_yolo(tmp_path)
    write_noise(tmp_path.parent / "outside.png", 8, 8, seed=2)
    (tmp_path / "val.txt").write_text(f"images/val/a.png\n{line}\n")
    (tmp_path / "data.yaml").write_text(f"val: val.txt\nnames: {NAMES}\n")
    with pytest.raises(ValueError, match=r"val\.txt: line 2: expected an image path inside the dataset root"):
        YoloTxtDataset(tmp_path / "data.yaml", split="val")
    dataset = YoloTxtDataset(tmp_path / "data.yaml", split="val", skip_invalid=True)
    assert len(dataset) == 1 and dataset.skipped["images"] == 1


def test_a_split_entry_out_of_the_root_and_a_symlinked_label_are_refused(tmp_path):
    write_yolo(tmp_path / "d")
    (tmp_path / "d/data.yaml").write_text(f"val: ../elsewhere\nnames: {NAMES}\n")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match=r"val: '\.\./elsewhere': expected a path inside the dataset root"):
        YoloTxtDataset(tmp_path / "d/data.yaml", split="val")
    write_yolo(tmp_path / "d")
    (tmp_path / "secret.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "d/labels/val/a.txt").unlink()
    (tmp_path / "d/labels/val/a.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ValueError, match=r"a\.txt: resolves outside its labels folder"):
        YoloTxtDataset(tmp_path / "d/data.yaml", split="val")


@pytest.mark.parametrize("line, message", [
    ("2 0.5 0.5 0.1 0.1", r"class: expected an integer index 0\.\.1 \(data\.yaml names\), got 2"),
    ("0.5 0.5 0.5 0.1 0.1", r"class: expected an integer index"),
    ("0 0.5 0.5 0.1", r"expected 5 values or an odd number >= 7: .*got 4 values"),
    ("0 0.5 0.5 0.1 0.1 0.3", r"expected 5 values.*got 6 values"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.3", r"expected 5 values.*got 8 values"),
    ("0 0.5 half 0.1 0.1", r"expected numbers 'class cx cy w h'"),
    ("0 0.5 0.5 nan 0.1", r"expected numbers"),
    ("0 1.2 0.5 0.1 0.1", r"expected coordinates normalised to \[0, 1\] by the image size, got 1\.2"),
    ("0 0.5 0.5 0 0.1", r"expected a box width and height > 0"),
    ("0 0.1 0.1 0.2 0.1 0.3 0.1", r"expected a polygon with a width and height > 0"),
])
def test_a_malformed_line_names_the_file_and_line_or_is_a_counted_skip(tmp_path, line, message):
    data = write_yolo(tmp_path)
    label = tmp_path / "labels/val/a.txt"
    label.write_text(label.read_text().splitlines()[0] + f"\n{line}\n")
    with pytest.raises(ValueError, match=r"labels/val/a\.txt: line 2: " + message):
        YoloTxtDataset(data, split="val")
    dataset = YoloTxtDataset(data, split="val", skip_invalid=True)
    assert [p.name for p in dataset.images] == ["b.png", "c.png"]
    assert dataset.skipped["images"] == 1 and "a.txt: line 2" in dataset.problems[0]


def test_coordinates_a_hair_outside_are_clipped_and_an_empty_file_is_background(tmp_path):
    data = write_yolo(tmp_path, seg=False)
    (tmp_path / "labels/val/a.txt").write_text("0 1.0005 0.5 0.2 0.5\n")  # cx rounded a hair past the edge
    (tmp_path / "labels/val/b.txt").write_text("")
    dataset = YoloTxtDataset(data, split="val")
    torch.testing.assert_close(dataset[0].boxes, torch.tensor([[36.0, 6.0, 40.0, 18.0]]))
    assert dataset[1].boxes.shape == (0, 4) and dataset[1].label is None


def test_one_box_line_makes_the_masks_missing_and_says_so(tmp_path, caplog):
    data = write_yolo(tmp_path)
    (tmp_path / "labels/val/b.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    with caplog.at_level(logging.WARNING, logger="datasets.yolo_txt"):
        dataset = YoloTxtDataset(data, split="val")
    assert not dataset.has_masks and dataset[0].mask is None and dataset[0].boxes.shape == (2, 4)
    assert "the split has no masks" in caplog.text


def test_the_training_split_class_list_must_match(tmp_path):
    data = write_yolo(tmp_path)
    assert YoloTxtDataset(data, split="val", class_names=NAMES).class_names == NAMES
    with pytest.raises(ValueError, match=r"names: expected the classes \['dog', 'cat'\] \(the training split's\)"):
        YoloTxtDataset(data, split="val", class_names=["dog", "cat"])


def test_images_root_replaces_the_split_folder(tmp_path):
    data = write_yolo(tmp_path)
    write_noise(tmp_path / "other/images/x.png", 16, 16, seed=9)
    (tmp_path / "other/labels").mkdir(parents=True)
    (tmp_path / "other/labels/x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    dataset = YoloTxtDataset(data, images_root=tmp_path / "other/images", split="val")
    assert [p.name for p in dataset.images] == ["x.png"] and dataset[0].box_labels.tolist() == [0]


def test_box_sizes_read_headers_and_follow_exif_rotation(tmp_path):
    data = write_yolo(tmp_path, seg=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the 40x24 file is a 24x40 picture
    (tmp_path / "images/val/a.png").unlink()
    Image.fromarray(np.zeros((40, 24, 3), np.uint8)).save(tmp_path / "images/val/a.png", exif=exif)
    dataset = YoloTxtDataset(data, split="val")
    sizes = dataset.box_sizes()
    record = dataset.load(0)
    assert record.image.shape[:2] == (24, 40)
    assert sizes.shape == (4, 4) and (sizes[:2, 2:] == [40, 24]).all() and (sizes[2:, 2:] == [32, 32]).all()
    np.testing.assert_allclose(sizes[:2, :2], record.boxes[:, 2:] - record.boxes[:, :2], atol=1e-4)
