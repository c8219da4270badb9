from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from datasets.build import ReadOptions, build_dataset
from datasets.coco import CocoDataset
from datasets.masks import MaskFolderDataset
from datasets.palette_masks import PaletteMaskDataset
from datasets.sample import IGNORE_INDEX
from datasets.transforms import AugmentOptions

CLASS_DICT = "name,r,g,b\nAnimal,64,128,64\nBackground,10,10,10\nCar,64,0,128\nVoid,0,0,0\n"
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nperson:89,134,179::\n"
# mask value -> colour, for the class_dict above: Animal 1, Car 2 (file order, background and void skipped).
CAMVID = {0: (10, 10, 10), 1: (64, 128, 64), 2: (64, 0, 128), IGNORE_INDEX: (0, 0, 0)}


def value_mask(size=(16, 24)) -> np.ndarray:
    """Quadrants 0, 1, 2, ignore, with a class-1 block inside the ignore quadrant."""
    mask = np.zeros(size, np.uint8)
    h, w = size[0] // 2, size[1] // 2
    mask[:h, w:], mask[h:, :w], mask[h:, w:] = 1, 2, IGNORE_INDEX
    mask[h + 2 : h + 4, w + 2 : w + 5] = 1
    return mask


def colour_mask(values: np.ndarray, colours=CAMVID) -> np.ndarray:
    rgb = np.zeros((*values.shape, 3), np.uint8)
    for value, colour in colours.items():
        rgb[values == value] = colour
    return rgb


def write_palette_folder(root, colours: dict[str, np.ndarray], table=("class_dict.csv", CLASS_DICT)):
    """root/images/<name>.png (noise, the mask's size), root/masks/<name>.png (RGB), root/<table>."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / table[0]).write_text(table[1])
    for seed, (name, rgb) in enumerate(colours.items()):
        noise = np.random.default_rng(seed).integers(0, 256, (*rgb.shape[:2], 3), np.uint8)
        cv2.imwrite(str(root / f"images/{name}.png"), noise)
        Image.fromarray(rgb).save(root / f"masks/{name}.png")
    return root


def write_equivalents(root, name: str, values: np.ndarray, class_names: list[str]):
    """The same mask as a grey index mask folder (root/grey) and as COCO (one RLE per class, ignore = crowd),
    over the palette folder's image."""
    (root / "grey/images").mkdir(parents=True)
    (root / "grey/masks").mkdir()
    (root / "grey/images" / f"{name}.png").write_bytes((root / "images" / f"{name}.png").read_bytes())
    Image.fromarray(values).save(root / "grey/masks" / f"{name}.png")
    (root / "grey/classes.txt").write_text("\n".join(class_names) + "\n")
    anns = []
    for value, crowd in [(v, 0) for v in range(1, len(class_names) + 1)] + [(IGNORE_INDEX, 1)]:
        region = (values == value).astype(np.uint8)
        ys, xs = np.nonzero(region)
        encoded = mask_utils.encode(np.asfortranarray(region))
        anns.append({"id": value, "image_id": 0, "category_id": 1 if crowd else value, "iscrowd": crowd,
                     "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                     "segmentation": {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}})
    coco = {"images": [{"id": 0, "file_name": f"images/{name}.png", "height": values.shape[0],
                        "width": values.shape[1]}],
            "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    (root / "coco.json").write_text(json.dumps(coco))


def test_a_camvid_class_dict_reads_like_the_grey_mask_folder_and_coco(tmp_path):
    values = value_mask()
    write_palette_folder(tmp_path, {"a": colour_mask(values)})
    write_equivalents(tmp_path, "a", values, ["Animal", "Car"])
    dataset = PaletteMaskDataset(tmp_path)
    assert dataset.class_names == ["Animal", "Car"] and dataset.category_ids == [1, 2]
    sample, grey, coco = dataset[0], MaskFolderDataset(tmp_path / "grey")[0], CocoDataset(tmp_path / "coco.json")[0]
    assert np.array_equal(sample.mask.numpy(), values)
    for other in (grey, coco):
        assert torch.equal(sample.image, other.image) and torch.equal(sample.mask, other.mask)
        assert sample.orig_size == other.orig_size == (16, 24)
    assert sample.label is None and sample.boxes is None and sample.multi_label is None  # a mask is all it knows
    assert grey.label is None and grey.boxes is None and dataset.unknown_pixels == 0


def test_a_cvat_labelmap_and_a_palette_png_mask(tmp_path):
    values = value_mask()
    values[values == IGNORE_INDEX] = 0  # this table has no void row
    colours = {0: (0, 0, 0), 1: (250, 50, 83), 2: (89, 134, 179)}
    write_palette_folder(tmp_path, {"a": colour_mask(values, colours)}, table=("labelmap.txt", LABELMAP))
    indexed = Image.fromarray(values).convert("P")  # the indices 0..2, shown in the table's colours
    indexed.putpalette([c for value in range(3) for c in colours[value]] + [0, 0, 0] * 253)
    indexed.save(tmp_path / "masks/a.png")
    dataset = PaletteMaskDataset(tmp_path)
    assert dataset.class_names == ["car", "person"]
    assert np.array_equal(dataset[0].mask.numpy(), values)


def test_build_dataset_resizes_like_the_grey_mask_folder(tmp_path):
    values = np.kron(value_mask((4, 4)), np.ones((8, 8), np.uint8))
    write_palette_folder(tmp_path, {"a": colour_mask(values)})
    write_equivalents(tmp_path, "a", values, ["Animal", "Car"])
    options = ReadOptions(image_size=16, augment=AugmentOptions())
    got = build_dataset("palette_masks", tmp_path, None, train=False, options=options)[0]
    expected = build_dataset("masks", tmp_path / "grey", None, train=False, options=options)[0]
    assert got.mask.shape == (16, 16) and torch.equal(got.mask, expected.mask)
    assert torch.equal(got.image, expected.image)


def test_a_few_unknown_colours_are_ignored_and_counted_many_are_a_named_error(tmp_path):
    rgb = colour_mask(value_mask())
    rgb[0, 0] = (1, 2, 3)  # one stray pixel of 384: an anti-aliased edge, say
    write_palette_folder(tmp_path, {"a": rgb})
    dataset = PaletteMaskDataset(tmp_path)
    mask = dataset[0].mask.numpy()
    assert mask[0, 0] == IGNORE_INDEX and dataset.unknown_pixels == 1
    assert np.array_equal(np.delete(mask.ravel(), 0), np.delete(value_mask().ravel(), 0))
    rgb[1:3, :10] = (7, 7, 7)  # 20 px, plus the stray one: 21 of 384 = 5.5%
    write_palette_folder(tmp_path, {"a": rgb, "b": colour_mask(value_mask())})
    with pytest.raises(ValueError, match=r"a\.png: expected the colours of class_dict\.csv, but 5\.5% of the pixels "
                                         r"have other colours, most often \(7, 7, 7\) \(20 px\), \(1, 2, 3\) \(1 px\)"
                                         r".*JPEG-compressed"):
        PaletteMaskDataset(tmp_path)[0]
    skipping = PaletteMaskDataset(tmp_path, skip_invalid=True)
    assert np.array_equal(skipping[0].mask.numpy(), value_mask()) and skipping.skipped["images"] == 1


@pytest.mark.parametrize("text, message", [
    ("name,red,green,blue\nCar,1,2,3\n", r"line 1: expected the header name,r,g,b"),
    ("name,r,g,b\nCar,1,2,3\nBus,1,2\n", r"line 3: expected name,r,g,b"),
    ("name,r,g,b\nCar,1,2,300\n", r"line 2: expected a colour r,g,b of integers 0\.\.255, got '1,2,300'"),
    ("name,r,g,b\nCar,1,2,3\nBus,1,2,3\n", r"line 3: expected each colour once, \(1, 2, 3\) is also on line 2"),
    ("name,r,g,b\nVoid,0,0,0\n", r"expected at least one class row besides background and void"),
])
def test_a_bad_class_dict_names_the_line(tmp_path, text, message):
    write_palette_folder(tmp_path, {"a": colour_mask(value_mask())}, table=("class_dict.csv", text))
    with pytest.raises(ValueError, match=r"class_dict\.csv: " + message):
        PaletteMaskDataset(tmp_path)


def test_the_table_must_be_there_once_and_match_the_training_classes(tmp_path):
    write_palette_folder(tmp_path, {"a": colour_mask(value_mask())})
    assert PaletteMaskDataset(tmp_path, class_names=["Animal", "Car"]).class_names == ["Animal", "Car"]
    with pytest.raises(ValueError, match=r"expected the classes \['Car', 'Animal'\] \(the training split's\)"):
        PaletteMaskDataset(tmp_path, class_names=["Car", "Animal"])
    (tmp_path / "labelmap.txt").write_text(LABELMAP)
    with pytest.raises(ValueError, match=r"expected one colour table, .*found \['class_dict\.csv', 'labelmap\.txt'\]"):
        PaletteMaskDataset(tmp_path)
    (tmp_path / "labelmap.txt").unlink()
    (tmp_path / "class_dict.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected one colour table, class_dict\.csv or labelmap\.txt"):
        PaletteMaskDataset(tmp_path)
