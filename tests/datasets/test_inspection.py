"""datasets.inspection: what inspect_split finds in small planted datasets, and what it may and may not conclude
from a sample."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datasets.build import ReadOptions, build_dataset
from datasets.coco import CocoDataset
from datasets.images import ImageOnlyDataset
from datasets.inspection import inspect_split, sample_positions
from datasets.masks import MaskFolderDataset
from datasets.mixture import MixtureDataset
from datasets.transforms import AugmentOptions


def write_gradient(path: Path, size: int = 32) -> None:
    """An 8-bit image with values 0..200 (kit.write_image's are one flat grey: constant, by design of this check)."""
    ramp = np.linspace(0, 200, size).round().astype(np.uint8)
    cv2.imwrite(str(path), np.repeat(np.tile(ramp, (size, 1))[..., None], 3, axis=2))


def broken_coco(root: Path, kit) -> Path:
    """Images 1-5 (32 px, classes a, b, c): 1 fine with boxes of a and b, 2 an undecodable file, 3 larger than
    declared, 4 an all-black 16-bit file, 5 without annotations; class c has no instance; one box has a negative
    width."""
    images = [kit.image(i) for i in range(1, 6)]
    annotations = [kit.box(1, 1, 1, [2, 2, 10, 10]), kit.box(2, 1, 2, [12, 12, 8, 8]),
                   kit.box(3, 4, 1, [4, 4, 6, 6]), kit.box(4, 1, 2, [5, 5, -3, 4]),
                   kit.box(5, 2, 1, [1, 1, 9, 9]), kit.box(6, 3, 2, [3, 3, 9, 9])]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    path = kit.write(root, images, annotations, categories)
    for good in (1, 5):
        write_gradient(root / f"img/{good}.png")
    (root / "img/2.png").write_bytes(b"not an image")
    kit.write_image(root / "img/3.png", 40, 40)
    cv2.imwrite(str(root / "img/4.png"), np.zeros((32, 32), np.uint16))
    return path


def test_each_planted_defect_is_found_with_its_file_and_reason(tmp_path, kit):
    annotations = broken_coco(tmp_path, kit)
    (source,) = inspect_split(CocoDataset(annotations, skip_invalid=True)).sources

    by_path = {f.path: f.reason for f in source.problems if f.path}
    assert "could not decode" in by_path[str(tmp_path / "img/2.png")]
    assert "decoded 40x40" in by_path[str(tmp_path / "img/3.png")]
    assert any("annotations[3].bbox" in f.reason and "w, h > 0" in f.reason for f in source.problems)
    assert source.constant_images == [str(tmp_path / "img/4.png")]
    assert source.unlabelled_images == [str(tmp_path / "img/5.png")]
    assert (source.decoded, source.readable) == (5, 3)
    assert source.raw_dtypes == ["uint16", "uint8"] and source.raw_range == [0.0, 200.0]
    assert source.policy_range == [0.0, 200 / 255]
    # Boxes from the annotations (every image, the bad ones too); image labels from the 3 readable images, less
    # image 1, whose skipped annotation (a b of unknown extent) makes its image label unknown.
    counts = {c.name: (c.boxes, c.image_labels) for c in source.classes}
    assert counts == {"a": (3, 1), "b": (2, 0), "c": (0, 0)}


def test_class_absence_is_certain_only_when_every_instance_was_counted(tmp_path, kit):
    """COCO annotations list every object, so a class without a box is absent even when nothing is decoded."""
    split = inspect_split(CocoDataset(broken_coco(tmp_path, kit), skip_invalid=True), decode_limit=0)
    assert split.certainly_absent() == ["c"]
    (source,) = split.sources
    assert source.decoded == 0 and source.counted_over["boxes"] == 5 and source.counted_over["mask_pixels"] == 0


def mask_folder(root: Path, x_in: list[int]) -> Path:
    """Four 32 px images, classes x, y, z: an 8x8 square of x in the masks `x_in`, a 4x4 square of y in the last
    mask, no z anywhere, and a top row of ignore pixels in every mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("x\ny\nz\n")
    for i in range(4):
        cv2.imwrite(str(root / f"images/{i}.png"), np.full((32, 32, 3), 90, np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 1 if i in x_in else 0
        mask[20:24, 20:24] = 2 if i == 3 else 0
        mask[0, :] = 255
        cv2.imwrite(str(root / f"masks/{i}.png"), mask)
    return root


def test_a_sample_of_a_mask_folder_never_claims_a_class_is_absent(tmp_path):
    """Masks are only known by decoding: images 0 and 3 say nothing about x, which only image 1 holds."""
    reader = MaskFolderDataset(mask_folder(tmp_path, x_in=[1]))
    sampled = inspect_split(reader, decode_limit=2)
    assert sampled.sources[0].decoded == 2 and not sampled.sources[0].exhaustive
    assert {c.name: c.mask_pixels for c in sampled.class_totals()} == {"x": 0, "y": 16, "z": 0}
    assert sampled.certainly_absent() == []

    full = inspect_split(reader, decode_limit=None)
    assert full.certainly_absent() == ["z"]
    assert {c.name: c.mask_pixels for c in full.class_totals()} == {"x": 64, "y": 16, "z": 0}
    assert full.sources[0].ignore_pixels == 4 * 32


def test_a_mixture_is_reported_per_source_with_class_totals_by_name(tmp_path, kit):
    boxes = kit.write(tmp_path / "coco", [kit.image(1), kit.image(2)],
                      [kit.box(1, 1, 1, [2, 2, 10, 10]), kit.box(2, 2, 1, [4, 4, 8, 8])],
                      [{"id": 1, "name": "x"}, {"id": 2, "name": "w"}])
    masks = mask_folder(tmp_path / "masks", x_in=[0, 1, 2, 3])
    raw = tmp_path / "raw"
    kit.write_image(raw / "a.png", 32, 32)
    mixture = MixtureDataset([CocoDataset(boxes), MaskFolderDataset(masks), ImageOnlyDataset(raw)],
                             ["boxes", "masks", "raw"])
    split = inspect_split(mixture, decode_limit=None)

    assert [(s.name, s.images, s.targets) for s in split.sources] == [
        ("boxes", 2, ["boxes", "labels"]), ("masks", 4, ["masks"]), ("raw", 1, [])]
    totals = {c.name: (c.boxes, c.mask_pixels) for c in split.class_totals()}
    assert totals == {"x": (2, 4 * 64), "w": (0, 0), "y": (0, 16), "z": (0, 0)}
    assert split.certainly_absent() == ["w", "z"]
    assert split.sources[2].unlabelled_images == []  # an unlabelled source is unlabelled by design
    assert len(split.box_sizes) == 2


def test_a_decode_failure_without_skip_invalid_is_a_finding_not_a_crash(tmp_path, kit):
    annotations = kit.write(tmp_path, [kit.image(1), kit.image(2)], [kit.box(1, 1, 1, [2, 2, 10, 10])])
    (tmp_path / "img/2.png").write_bytes(b"broken")
    options = ReadOptions(image_size=32, augment=AugmentOptions())
    (source,) = inspect_split(build_dataset("coco", annotations, None, train=True, options=options)).sources
    assert [f.path for f in source.problems] == [str(tmp_path / "img/2.png")]
    assert source.readable == 1


def test_decode_limit_spreads_the_decoded_images_evenly():
    assert sample_positions(100, 5) == [0, 25, 50, 74, 99]
    assert sample_positions(3, 8) == [0, 1, 2]
    assert sample_positions(3, None) == [0, 1, 2]
    assert sample_positions(10, 0) == []
