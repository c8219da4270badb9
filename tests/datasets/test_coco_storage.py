"""The COCO reader's arrays (datasets/coco_storage.py) read what pycocotools' own index reads, hold no Python
object per image or annotation (what forked DataLoader workers would copy), and stay right when entries are
dropped; the header of a file many entries share is read once per file."""
from __future__ import annotations

import contextlib
import gc
import io
import types

import numpy as np
import pytest
from pycocotools.coco import COCO

from datasets import header_cache
from datasets.coco import CocoDataset
from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX
from datasets.screening import screen

CATEGORIES = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}, {"id": 11, "name": "c"}]  # classes a, b, c


def polygon(x: float, y: float, size: float) -> list[float]:
    return [x, y, x + size, y, x + size, y + size * 0.7, x + 0.3, y + size]


def rectangle_counts(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """Uncompressed RLE (column-major runs, zeros first) of pixels [y0:y1, x0:x1], as COCO writes crowds."""
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return runs if flat[0] == 0 else [0] + runs


def write_varied(tmp_path, kit) -> tuple:
    """Every kind of annotation COCO files hold, out of image order in the file, on images of two sizes."""
    images = [kit.image(10, 32, 40), kit.image(20), kit.image(30), kit.image(40, 24, 32), kit.image(50)]
    square = np.zeros((32, 32), np.uint8)
    square[4:20, 6:14] = 1
    anns = [
        kit.box(1, 30, 7, [6, 4, 8, 16], segmentation=kit.rle(square)),                    # RLE string
        kit.box(2, 10, 3, [1, 1, 10, 8], segmentation=[polygon(1, 1, 10)]),
        kit.box(3, 30, 11, [2.5, 20.25, 12, 11.9], segmentation=[polygon(2.5, 20.25, 11),  # two parts
                                                                  polygon(20, 21, 6)]),
        kit.box(4, 40, 3, [0, 0, 20, 16], iscrowd=1,                                     # crowd, counts list
                segmentation={"size": [24, 32], "counts": rectangle_counts(24, 32, 0, 0, 20, 16)}),
        kit.box(5, 40, 7, [4, 4, 6, 6], segmentation=[polygon(4, 4, 6)]),                # inside the crowd
        kit.box(6, 10, 11, [30, 25, 12, 9], segmentation=[polygon(30, 25, 9.5)]),         # overhangs the border
        kit.box(7, 50, 3, [3, 3, 9, 9]),                                                  # box only: mask unknown
        kit.box(8, 10, 7, [5, 5, 20, 20], segmentation=[polygon(5, 5, 20)]),
    ]
    return kit.write(tmp_path, images, anns, CATEGORIES), images, anns


def pycocotools_record(coco: COCO, image_id: int, size: tuple[int, int]) -> dict:
    """What an image's targets are by pycocotools' own index of the file: the reader's rules, its data."""
    class_of = {cid: i for i, cid in enumerate(sorted(coco.cats))}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    objects, crowds = [a for a in anns if not a["iscrowd"]], [a for a in anns if a["iscrowd"]]
    mask = None
    if all(a.get("segmentation") for a in anns):
        mask = np.zeros(size, np.uint8)
        for a in crowds + objects:
            mask[coco.annToMask(a).astype(bool)] = IGNORE_INDEX if a["iscrowd"] else class_of[a["category_id"]] + 1
    return {"boxes": xyxy([a["bbox"] for a in objects], size),
            "box_labels": [class_of[a["category_id"]] for a in objects],
            "ignore_boxes": xyxy([a["bbox"] for a in crowds], size),
            "ignore_labels": [class_of[a["category_id"]] for a in crowds], "mask": mask}


def xyxy(boxes: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    out = np.array(boxes, np.float32).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return np.clip(out, 0, [size[1], size[0], size[1], size[0]]).astype(np.float32)


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_every_sample_equals_what_pycocotools_own_index_reads(tmp_path, kit):
    path, images, anns = write_varied(tmp_path, kit)
    coco, dataset = load_coco(path), CocoDataset(path)
    assert dataset.class_names == ["a", "b", "c"] and dataset.category_ids == [3, 7, 11]
    assert [int(i) for i in dataset.image_ids] == [image["id"] for image in images]
    for position, image in enumerate(images):
        record = dataset.load(position)
        expected = pycocotools_record(coco, image["id"], (image["height"], image["width"]))
        assert record.image_id == image["id"]
        np.testing.assert_array_equal(record.boxes, expected["boxes"])
        assert record.box_labels.tolist() == expected["box_labels"]
        np.testing.assert_array_equal(record.ignore_boxes, expected["ignore_boxes"])
        assert record.ignore_labels.tolist() == expected["ignore_labels"]
        if expected["mask"] is None:
            assert record.mask is None
        else:
            np.testing.assert_array_equal(record.mask, expected["mask"])
    # Not vacuous: the crowd covers its 20x16 box but for the object drawn inside it, and box-only is unknown.
    crowded = dataset.load(3).mask
    assert (crowded == 2).sum() > 0 and (crowded == IGNORE_INDEX).sum() == 20 * 16 - (crowded == 2).sum()
    assert dataset.load(4).mask is None


def test_box_sizes_and_counts_come_from_every_annotation_in_the_file_order(tmp_path, kit):
    path, images, anns = write_varied(tmp_path, kit)
    dataset = CocoDataset(path)
    size = {image["id"]: (image["width"], image["height"]) for image in images}
    expected = [[*a["bbox"][2:], *size[a["image_id"]]] for a in anns if not a["iscrowd"]]
    np.testing.assert_array_equal(dataset.box_sizes(), np.array(expected, np.float32))
    index = dataset.annotation_index()
    assert index.counts["boxes"].tolist() == [2, 3, 2] and index.counts["ignore_regions"].tolist() == [1, 0, 0]
    assert index.unlabelled == [1] and "masks" in index.targets


def reachable_objects(root: object) -> int:
    """Python objects reachable from `root`, not counting classes, modules and functions (shared code)."""
    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def test_the_reader_holds_no_python_object_per_image_or_annotation(tmp_path, kit):
    """What a forked worker copies as it reads is the Python objects it touches: a reader of 200 images and
    6,000 outlined objects must hold as many as one of 2 images and 2 objects."""
    def write(root, count: int, per_image: int):
        images = [kit.image(i + 1) for i in range(count)]
        anns = [kit.box(len(images) * k + i, i + 1, 3, [1, 1, 8, 8], segmentation=[polygon(1, 1, 8)])
                for i in range(count) for k in range(per_image)]
        return CocoDataset(kit.write(root, images, anns, CATEGORIES))

    small, large = write(tmp_path / "small", 2, 1), write(tmp_path / "large", 200, 30)
    assert len(large) == 200 and large.annotation_index().counts["boxes"].sum() == 6000
    assert reachable_objects(large) - reachable_objects(small) < 10


def assert_same_record(ours: RawRecord, theirs: RawRecord) -> None:
    assert ours.image_id == theirs.image_id and ours.label == theirs.label
    for name in ("mask", "boxes", "box_labels", "multi_label", "ignore_boxes", "ignore_labels"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_dropping_entries_keeps_each_remaining_image_with_exactly_its_own_annotations(tmp_path, kit):
    """A file with image 30 unreadable, screened and dropped, reads as the same file without image 30."""
    path, images, anns = write_varied(tmp_path / "all", kit)
    (tmp_path / "all/img/30.png").write_bytes(b"not an image")
    dataset = CocoDataset(path, skip_invalid=True)
    assert screen(dataset, "train") == [] and dataset.skipped["images"] == 1

    kept = [image for image in images if image["id"] != 30]
    without = CocoDataset(kit.write(tmp_path / "without", kept, [a for a in anns if a["image_id"] != 30],
                                    CATEGORIES))
    assert [int(i) for i in dataset.image_ids] == [10, 20, 40, 50] and len(dataset) == len(without)
    for position in range(len(dataset)):
        assert_same_record(dataset.load(position), without.load(position))
    np.testing.assert_array_equal(dataset.box_sizes(), without.box_sizes())
    ours, theirs = dataset.annotation_index(), without.annotation_index()
    assert {k: v.tolist() for k, v in ours.counts.items()} == {k: v.tolist() for k, v in theirs.counts.items()}
    assert ours.unlabelled == theirs.unlabelled == [1]


def test_keep_reorders_images_with_their_annotations(tmp_path, kit):
    path, _, _ = write_varied(tmp_path, kit)
    original, dataset = CocoDataset(path), CocoDataset(path)
    dataset._keep([3, 0])
    assert [int(i) for i in dataset.image_ids] == [40, 10]
    assert_same_record(dataset.load(0), original.load(3))
    assert_same_record(dataset.load(1), original.load(0))
    assert [dataset.file_name(0), dataset.file_name(1)] == ["img/40.png", "img/10.png"]


def test_a_file_named_by_many_entries_has_its_header_read_once_and_again_once_replaced(tmp_path, kit, monkeypatch):
    images = [{**kit.image(i), "file_name": "shared.png"} for i in range(1, 6)]
    kit.write_image(tmp_path / "shared.png", 32, 32)
    path = kit.write(tmp_path, images, [], create_files=False)
    reads = []
    monkeypatch.setattr(header_cache, "header_size", lambda p, exif=True: reads.append(p) or (32, 32))
    dataset = CocoDataset(path)
    assert screen(dataset, "train") == [] and len(reads) == 1
    monkeypatch.undo()
    (tmp_path / "shared.png").write_bytes(b"not an image any more")
    found = screen(dataset, "train")
    assert len(found) == 5 and all("shared.png" in entry.reason for entry in found)


@pytest.mark.parametrize("counts", [[-1, 1025], [512, 512.0], [2000]])
def test_uncompressed_counts_must_be_run_lengths_within_the_image(tmp_path, kit, counts):
    anns = [kit.box(1, 1, 3, [0, 0, 8, 8], iscrowd=1, segmentation={"size": [32, 32], "counts": counts})]
    with pytest.raises(ValueError, match=r"annotations\[0\]\.segmentation: expected RLE .*run lengths 0\.\.1024"):
        CocoDataset(kit.write(tmp_path, [kit.image(1)], anns, CATEGORIES))
    assert len(CocoDataset(kit.write(tmp_path, [kit.image(1)], anns, CATEGORIES), skip_invalid=True)) == 1
