"""The image policy: every depth, channel count, alpha and EXIF orientation reaches the model on purpose."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from datasets.build import ReadOptions, build_dataset
from datasets.coco import CocoDataset
from datasets.image_io import ImagePolicy, dataset_range, decode, read_image, read_label_image
from datasets.masks import MaskFolderDataset
from datasets.transforms import AugmentOptions

GRADIENT = np.tile(np.arange(64, dtype=np.float64), (16, 1))  # 16 x 64, increasing left to right


def _as(dtype, top: float) -> np.ndarray:
    return np.round(GRADIENT / GRADIENT.max() * top).astype(dtype)


def _increasing(row: np.ndarray) -> bool:
    return bool(np.all(np.diff(row) >= 0) and row[-1] > row[0])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("top", [212, 4095, 65535])  # dim 16-bit (the microscopy case), 12-bit, full 16-bit
def test_deep_grey_images_keep_their_contrast_and_ordering(tmp_path, suffix, top):
    path = tmp_path / f"g{suffix}"
    stored = _as(np.uint16, top)
    cv2.imwrite(str(path), stored) if suffix == ".png" else tifffile.imwrite(path, stored)
    assert decode(path).dtype == np.uint16 and decode(path).max() == top  # stored values kept, not shifted
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (16, 64, 3)
    assert np.array_equal(image[..., 0], image[..., 2])  # grey replicated for an RGB backbone
    # auto: the 0.5..99.5 percentiles become 0..1, so the image spans the whole range, in order
    assert image.min() == 0.0 and image.max() == 1.0 and _increasing(image[0, :, 0])


def test_a_fixed_range_maps_12_bit_data_exactly(tmp_path):
    path = tmp_path / "twelve.png"
    cv2.imwrite(str(path), _as(np.uint16, 4095))
    image = read_image(path, ImagePolicy(intensity=(0, 4095), channels=1))
    np.testing.assert_allclose(image[..., 0], _as(np.uint16, 4095) / 4095, atol=1e-6)


def test_float_tiffs_are_stretched_and_8_bit_images_are_left_as_they_are(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", (GRADIENT * 0.01 - 0.2).astype(np.float32))
    assert _increasing(read_image(tmp_path / "f.tif")[0, :, 0])
    rgb = np.random.default_rng(0).integers(0, 256, (16, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    image = read_image(tmp_path / "c.png")
    assert image.dtype == np.uint8 and np.array_equal(image, rgb)  # 8-bit: byte for byte, RGB order


def test_the_dataset_policy_takes_one_range_from_the_training_images(tmp_path):
    paths = []
    for i, top in enumerate((1000, 3000)):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), _as(np.uint16, top))
    lo, hi = dataset_range(paths, ImagePolicy(intensity="dataset", percentiles=(0.0, 100.0)))
    assert (lo, hi) == (0.0, 3000.0)
    dim = read_image(paths[0], ImagePolicy(intensity=(lo, hi)))
    assert dim.max() == pytest.approx(1000 / 3000, abs=1e-6)  # the dim image stays dimmer than the bright one
    with pytest.raises(ValueError, match="resolved"):
        read_image(paths[0], ImagePolicy(intensity="dataset"))


def test_opaque_rgba_and_grey_files_give_the_pixels_of_their_rgb_twins(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((16, 24), 255, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), read_image(tmp_path / "rgb.png"))
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_image(tmp_path / "grey.png"), read_image(tmp_path / "grey_rgb.png"))
    assert read_image(tmp_path / "grey.png", ImagePolicy(channels=1)).shape == (16, 24, 1)


def test_transparent_pixels_show_the_configured_background(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", ImagePolicy(alpha_background=1.0))
    assert image[0, 0].tolist() == [200, 0, 0] and image[0, 3].tolist() == [255, 255, 255]


def test_multispectral_tiffs_keep_their_bands_and_need_the_channel_count(tmp_path):
    bands = np.stack([_as(np.uint16, 100 * (b + 1)) for b in range(5)])  # planar: 5 x 16 x 64
    tifffile.imwrite(tmp_path / "ms.tif", bands, photometric="minisblack")
    image = read_image(tmp_path / "ms.tif", ImagePolicy(channels=5))
    assert image.shape == (16, 64, 5) and all(_increasing(image[0, :, b]) for b in range(5))
    with pytest.raises(ValueError, match=r"ms\.tif: the image has 5 channel\(s\) but data\.channels is 3; set data\.channels: 5"):
        read_image(tmp_path / "ms.tif")


def test_a_z_stack_is_refused_with_its_axes(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 2, 8, 8), np.uint16), metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match=r"z\.tif: expected a 2-D image .*ZCYX"):
        read_image(tmp_path / "z.tif")


def _save_with_orientation(array: np.ndarray, path, orientation: int) -> None:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def test_exif_orientation_turns_images_and_masks_alike(tmp_path):
    """A photo stored sideways with orientation 6 (rotate 90 clockwise to view) and its mask: both are
    read upright, so the mask stays on the object; a mask drawn on the upright picture stays aligned too."""
    upright = np.zeros((20, 30, 3), np.uint8)
    upright[2:8, 20:28] = 255                                   # an object near the top right
    mask = (upright[..., 0] > 0).astype(np.uint8)
    stored = np.rot90(upright, k=1)                             # what the camera wrote: 30 x 20
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _save_with_orientation(stored, tmp_path / "images/a.png", 6)
    _save_with_orientation(np.rot90(mask, k=1), tmp_path / "masks/a.png", 6)   # mask stored like its image
    Image.fromarray(mask).save(tmp_path / "masks/b.png")                       # mask drawn on the upright view
    _save_with_orientation(stored, tmp_path / "images/b.png", 6)
    (tmp_path / "classes.txt").write_text("object\n")
    dataset = MaskFolderDataset(tmp_path)
    for i in range(2):
        record = dataset.read_record(i)
        assert np.array_equal(record.image, upright)
        assert np.array_equal(record.mask, mask)
    assert read_label_image(tmp_path / "masks/a.png", exif_orientation=False).shape == (30, 20)


def test_a_16_bit_coco_set_reaches_the_model_with_contrast(tmp_path):
    """The defect that started this: 0-212 stored in 16 bits arrived as an all-black image."""
    cv2.imwrite(str(tmp_path / "a.png"), _as(np.uint16, 212))
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 2, 20, 10], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "nucleus"}]}))
    assert CocoDataset(tmp_path / "annotations.json")[0].image.max() == 1.0
    sample = build_dataset("coco", tmp_path / "annotations.json", None, train=False,
                           options=ReadOptions(image_size=32, augment=AugmentOptions()))[0]
    assert sample.image.min() < 0.02 and sample.image.max() > 0.98  # the resize blends neighbours a little
