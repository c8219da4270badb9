"""What every reader does alike. One symlink policy (datasets/paths.py): a file whose real path leaves its
dataset is an error naming it or, with skip_invalid, a counted skip; a dataset folder that is itself a symlink
reads. And the guard's screening: an unreadable image is named, or with skip_invalid dropped, the other entries
reading as before."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.build import FORMATS
from datasets.screening import screen


def image(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 10, 3), value, np.uint8))


def coco(root: Path) -> tuple[Path, Path]:
    for i in range(2):
        image(root / f"img/{i}.png")
    entries = [{"id": i, "file_name": f"img/{i}.png", "width": 10, "height": 8} for i in range(2)]
    (root / "a.json").write_text(json.dumps({"images": entries, "annotations": [],
                                             "categories": [{"id": 1, "name": "a"}]}))
    return root / "a.json", root / "img/1.png"


def masks(root: Path, colour: bool = False) -> tuple[Path, Path]:
    (root / "masks").mkdir(parents=True)
    for i in range(2):
        image(root / f"images/{i}.png")
        cv2.imwrite(str(root / f"masks/{i}.png"), np.zeros((8, 10, 3) if colour else (8, 10), np.uint8))
    if colour:
        (root / "class_dict.csv").write_text("name,r,g,b\nbackground,0,0,0\na,255,0,0\n")
    else:
        (root / "classes.txt").write_text("a\nb\n")
    return root, root / "images/1.png"


def yolo(root: Path) -> tuple[Path, Path]:
    for i in range(2):
        image(root / f"images/val/{i}.png")
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/val/0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("val: images/val\nnames: [a]\n")
    return root / "data.yaml", root / "images/val/1.png"


def voc(root: Path) -> tuple[Path, Path]:
    (root / "Annotations").mkdir(parents=True)
    for i in range(2):
        image(root / f"JPEGImages/{i}.png")
        (root / f"Annotations/{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>10</width><height>8</height></size>"
            "<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object></annotation>")
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/val.txt").write_text("0\n1\n")
    return root, root / "JPEGImages/1.png"


def imagefolder(root: Path) -> tuple[Path, Path]:
    for i in range(2):
        image(root / f"a/{i}.png")
    return root, root / "a/1.png"


def images(root: Path) -> tuple[Path, Path]:
    for i in range(2):
        image(root / f"{i}.png")
    return root, root / "1.png"


def mask_file(root: Path) -> tuple[Path, Path]:
    """The mask, not the image, leads out: the pair is skipped whole."""
    masks(root)
    return root, root / "masks/1.png"


def voc_xml(root: Path) -> tuple[Path, Path]:
    """A folder of XMLs, one of them a link out."""
    voc(root)
    return root / "Annotations", root / "Annotations/1.xml"


BUILDERS: dict[str, tuple[str, Callable[[Path], tuple[Path, Path]]]] = {
    "coco": ("coco", coco), "masks": ("masks", masks), "palette_masks": ("palette_masks", lambda r: masks(r, True)),
    "yolo": ("yolo", yolo), "voc": ("voc", voc), "imagefolder": ("imagefolder", imagefolder),
    "images": ("images", images), "masks: the mask file": ("masks", mask_file), "voc: an XML file": ("voc", voc_xml),
}


def test_every_format_is_covered():
    assert set(FORMATS) <= {fmt for fmt, _ in BUILDERS.values()}


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_a_file_leading_out_of_the_dataset_is_refused_or_a_counted_skip(tmp_path, case):
    fmt, build = BUILDERS[case]
    annotations, inside = build(tmp_path / "data")
    outside = tmp_path / f"outside{inside.suffix}"
    outside.write_bytes(inside.read_bytes())   # a perfectly readable file: only where it is matters
    inside.unlink()
    inside.symlink_to(outside)
    reader = FORMATS[fmt]
    with pytest.raises(ValueError, match=rf"{inside.name}.* resolves outside|{inside.name}: resolves outside"):
        reader(annotations, split="val")
    lenient = reader(annotations, split="val", skip_invalid=True)
    assert len(lenient) == 1 and lenient.skipped["images"] == 1
    assert any("resolves outside" in reason and inside.name in reason for reason in lenient.problems)
    assert lenient.image_path(0).name.startswith("0.")


@pytest.mark.parametrize("case", ["coco", "masks", "yolo", "voc", "imagefolder", "images"])
def test_a_dataset_folder_that_is_itself_a_symlink_reads(tmp_path, case):
    fmt, build = BUILDERS[case]
    annotations, _ = build(tmp_path / "data")
    (tmp_path / "linked").symlink_to(tmp_path / "data", target_is_directory=True)
    linked = tmp_path / "linked" / annotations.relative_to(tmp_path / "data")
    assert len(FORMATS[fmt](linked, split="val")) == 2


@pytest.mark.parametrize("case", sorted(set(FORMATS)))
def test_an_unreadable_image_is_named_or_dropped_and_the_rest_read(tmp_path, case):
    fmt, build = BUILDERS[case]
    annotations, broken = build(tmp_path / "data")
    broken.write_bytes(b"not an image")
    strict = FORMATS[fmt](annotations, split="val")
    (found,) = screen(strict, "val")
    assert found.path == broken and str(broken) in found.reason and len(strict) == 2
    lenient = FORMATS[fmt](annotations, split="val", skip_invalid=True)
    assert screen(lenient, "val") == [] and len(lenient) == 1 and lenient.skipped["images"] == 1
    assert lenient.image_path(0).name.startswith("0.") and lenient.load(0).image.shape[:2] == (8, 10)
