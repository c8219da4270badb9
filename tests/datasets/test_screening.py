"""The cheap check before training: image headers say what decoding would (never refusing a file that reads),
each reader checks what its load() would check, and dropping bad entries leaves every other entry intact."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from datasets import image_header
from datasets.coco import CocoDataset
from datasets.image_header import header_size
from datasets.image_io import decode
from datasets.masks import MaskFolderDataset
from datasets.screening import bad_entries, screen
from datasets.voc import VocDataset
from datasets.yolo_txt import YoloTxtDataset


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def cut(path: Path, fraction: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def write_file(path: Path, kind: str) -> None:
    """Files that decode and files that do not, 24 px high and 40 px wide where they decode."""
    image = noise(24, 40)
    if kind in ("png", "png cut", "png cut at the end"):
        cv2.imwrite(str(path), image)
        if kind != "png":
            cut(path, 0.5 if kind == "png cut" else (path.stat().st_size - 6) / path.stat().st_size)
    elif kind in ("jpg", "jpg cut"):
        cv2.imwrite(str(path), image)
        if kind == "jpg cut":
            cut(path)
    elif kind in ("tif", "tif cut"):
        tifffile.imwrite(path, image)
        if kind == "tif cut":
            cut(path, 0.8)
    elif kind == "tif z-stack":
        tifffile.imwrite(path, np.zeros((3, 2, 24, 40), np.uint16), metadata={"axes": "ZCYX"})
    elif kind == "png turned by exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # a quarter turn: read as 40 high, 24 wide
        Image.fromarray(image).save(path, exif=exif)
    elif kind == "16-bit png":
        cv2.imwrite(str(path), (np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 50))
    elif kind == "not an image":
        path.write_bytes(b"this is not an image at all")
    elif kind == "empty":
        path.write_bytes(b"")


KINDS = {"png": ".png", "png cut": ".png", "png cut at the end": ".png", "jpg": ".jpg", "jpg cut": ".jpg",
         "tif": ".tif", "tif cut": ".tif", "tif z-stack": ".tif", "png turned by exif": ".png",
         "16-bit png": ".png", "not an image": ".png", "empty": ".jpg"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_header_refuses_exactly_what_decoding_refuses_at_the_size_decoding_gives(tmp_path, kind):
    path = tmp_path / f"file{KINDS[kind]}"
    write_file(path, kind)
    try:
        decoded = decode(path).shape[:2]
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(path))) as refused:
            header_size(path)
        if kind == "tif z-stack":  # refused from the header, for the reason decoding gives
            assert str(refused.value) == str(error)
        return
    assert header_size(path) == decoded
    assert header_size(path, exif_orientation=False) == decode(path, exif_orientation=False).shape[:2]


@pytest.mark.parametrize("kind", ["png", "jpg", "tif", "png turned by exif", "16-bit png"])
def test_a_complete_file_is_judged_by_its_header_alone(tmp_path, kind, monkeypatch):
    """Seconds, not minutes, for a large split: a file whose header vouches for it is never decoded."""
    path = tmp_path / f"file{KINDS[kind]}"
    write_file(path, kind)
    monkeypatch.setattr(image_header, "decode", lambda *args: pytest.fail("decoded the pixels"))
    header_size(path)


# ---- each reader checks what its load() checks ---------------------------------------------------------------


def coco_with_one_wrong_size(root: Path) -> CocoDataset:
    (root / "img").mkdir(parents=True)
    images = [{"id": i, "file_name": f"img/{i}.png", "width": 40, "height": 24} for i in range(3)]
    for i in range(3):
        cv2.imwrite(str(root / f"img/{i}.png"), noise(24, 40 if i != 1 else 32, seed=i))
    annotations = [{"id": i + 1, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 5 + i, 5], "iscrowd": 0}
                   for i in range(3)]
    (root / "a.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                             "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return CocoDataset(root / "a.json", skip_invalid=True)


def voc_with_one_wrong_size(root: Path) -> VocDataset:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / f"JPEGImages/{i}.png"), noise(24, 40 if i != 1 else 32, seed=i))
        (root / f"Annotations/{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>40</width><height>24</height></size>"
            f"<object><name>a</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>{8 + i}</xmax><ymax>9</ymax>"
            f"</bndbox></object></annotation>")
    (root / "ImageSets/Main/train.txt").write_text("0\n1\n2\n")
    return VocDataset(root, skip_invalid=True)


def masks_with_one_wrong_size(root: Path) -> MaskFolderDataset:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\n")
    for i in range(3):
        cv2.imwrite(str(root / f"images/{i}.png"), noise(24, 40, seed=i))
        cv2.imwrite(str(root / f"masks/{i}.png"), np.zeros((24, 40 if i != 1 else 32), np.uint8))
    return MaskFolderDataset(root, skip_invalid=True)


@pytest.mark.parametrize("build, message", [
    (coco_with_one_wrong_size, r"images\[1\]: expected a 40x24 image as declared by width/height, the header of "
                               r"img/1\.png says 32x24"),
    (voc_with_one_wrong_size, r"1\.xml: size: expected a 40x24 image as declared, its header says 32x24"),
    (masks_with_one_wrong_size, r"masks/1\.png: expected the size of its image 1\.png, 40x24, got 32x24"),
])
def test_each_reader_finds_by_headers_the_entry_its_load_would_refuse(tmp_path, build, message):
    reader = build(tmp_path)
    bad = bad_entries(reader)
    assert list(bad) == [1] and re.search(message, str(bad[1])), bad
    with pytest.raises(ValueError):
        reader.load(1)   # what load() refuses too, having decoded it
    for position in (0, 2):
        reader.load(position)


def test_dropping_an_entry_keeps_every_other_entry_with_its_own_annotations(tmp_path):
    coco = coco_with_one_wrong_size(tmp_path / "coco")
    assert screen(coco, "train") == [] and len(coco) == 2 and coco.skipped["images"] == 1
    assert [coco.load(i).boxes[0, 2] for i in range(2)] == [7.0, 9.0]      # images 0 and 2: boxes 5 and 7 wide
    np.testing.assert_array_equal(coco.box_sizes()[:, 0], [5, 7])          # the dropped image's box is gone
    assert coco.annotation_index().counts["boxes"].tolist() == [2, 0]    # a, b, a: the b was on image 1

    root = tmp_path / "yolo"
    for i in range(3):
        (root / "images/val").mkdir(parents=True, exist_ok=True)
        (root / "labels/val").mkdir(parents=True, exist_ok=True)
        image = root / f"images/val/{i}.png"
        cv2.imwrite(str(image), noise(20, 20, seed=i))
        (root / f"labels/val/{i}.txt").write_text(f"{i} 0.5 0.5 0.5 0.5\n")
    (root / "images/val/1.png").write_bytes(b"broken")
    (root / "data.yaml").write_text("val: images/val\nnames: [a, b, c]\n")
    yolo = YoloTxtDataset(root / "data.yaml", split="val", skip_invalid=True)
    screen(yolo, "val")
    assert [yolo.image_path(i).name for i in range(2)] == ["0.png", "2.png"]
    assert [yolo.load(i).box_labels.tolist() for i in range(2)] == [[0], [2]]   # labels still beside their images


def test_without_skip_invalid_screening_names_the_bad_entries_and_changes_nothing(tmp_path):
    coco = coco_with_one_wrong_size(tmp_path)
    coco.skip_invalid = False
    (found,) = screen(coco, "val")
    assert (found.source, found.path.name) == ("val", "1.png") and "says 32x24" in found.reason
    assert len(coco) == 3 and coco.skipped["images"] == 0
