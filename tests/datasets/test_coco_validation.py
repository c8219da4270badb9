from __future__ import annotations

import logging

import pytest

from datasets.coco import CocoDataset


@pytest.mark.parametrize("file_name", ["../secret.png", "/etc/passwd", "img/../../secret.png"])
def test_file_name_outside_the_images_root_is_rejected_even_if_it_exists(tmp_path, kit, file_name):
    kit.write_image(tmp_path / "secret.png", 32, 32)
    entry = {**kit.image(1), "file_name": file_name}
    path = kit.write(tmp_path / "data", [entry], [], create_files=False)
    with pytest.raises(ValueError) as error:
        CocoDataset(path)
    assert "annotations.json" in str(error.value) and "images[0].file_name" in str(error.value)
    assert file_name in str(error.value)


def test_a_symlink_out_of_the_images_root_is_refused_or_skipped_but_a_symlinked_root_reads(tmp_path, kit):
    kit.write_image(tmp_path / "elsewhere/secret.png", 32, 32)
    path = kit.write(tmp_path / "data", [kit.image(1), kit.image(2)], [])
    (tmp_path / "data/img/2.png").unlink()
    (tmp_path / "data/img/2.png").symlink_to(tmp_path / "elsewhere/secret.png")
    with pytest.raises(ValueError, match=r"images\[1\]\.file_name: .*2.png resolves outside the images root"):
        CocoDataset(path)
    assert len(CocoDataset(path, skip_invalid=True)) == 1
    (tmp_path / "linked").symlink_to(tmp_path / "data", target_is_directory=True)   # the whole root elsewhere
    (tmp_path / "data/img/2.png").unlink()
    kit.write_image(tmp_path / "data/img/2.png", 32, 32)
    assert len(CocoDataset(tmp_path / "linked/annotations.json")) == 2


def test_missing_image_file_names_the_entry_and_the_file(tmp_path, kit):
    path = kit.write(tmp_path, [kit.image(1)], [])
    (tmp_path / "img/1.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        CocoDataset(path)
    assert "annotations.json" in str(error.value) and "images[0].file_name" in str(error.value)
    assert "1.png" in str(error.value)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"bbox": [1, 2, -3, 4]}, "annotations[1].bbox"),
        ({"bbox": [1, 2, 3]}, "annotations[1].bbox"),
        ({"bbox": [40, 40, 5, 5]}, "annotations[1].bbox"),  # entirely outside the 32x32 image
        ({"category_id": 7}, "annotations[1].category_id"),
        ({"image_id": 99}, "annotations[1].image_id"),
        ({"segmentation": [[1, 2, 3]]}, "annotations[1].segmentation"),
    ],
)
def test_bad_annotation_names_the_file_and_field(tmp_path, kit, bad, field):
    anns = [kit.box(1, 1, 1, [0, 0, 4, 4]), {**kit.box(2, 1, 1, [0, 0, 4, 4]), **bad}]
    path = kit.write(tmp_path, [kit.image(1)], anns)
    with pytest.raises(ValueError) as error:
        CocoDataset(path)
    assert "annotations.json" in str(error.value) and field in str(error.value)
    assert "expected" in str(error.value)


def test_bad_bbox_message_shows_what_was_expected_and_found(tmp_path, kit):
    path = kit.write(tmp_path, [kit.image(1)], [kit.box(1, 1, 1, [1, 2, -3, 4])])
    with pytest.raises(ValueError, match=r"annotations\[0\]\.bbox: expected 4 numbers \[x, y, w, h\] with w, h > 0, got \[1, 2, -3, 4\]"):
        CocoDataset(path)


def test_skip_invalid_drops_and_counts_bad_entries_and_logs_once(tmp_path, kit, caplog):
    images = [kit.image(1), kit.image(2), {**kit.image(3), "file_name": "../../etc/passwd"}, kit.image(4)]
    for image_id in (1, 2):
        kit.write_image(tmp_path / f"img/{image_id}.png", 32, 32)
    anns = [
        kit.box(1, 1, 1, [0, 0, 4, 4]),
        kit.box(2, 1, 5, [0, 0, 4, 4]),        # unknown category
        kit.box(3, 2, 2, [0, 0, 0, 4]),        # zero width
        kit.box(4, 4, 1, [0, 0, 4, 4]),        # on image 4, whose file is missing: dropped with it, not counted
    ]
    path = kit.write(tmp_path, images, anns, create_files=False)
    with caplog.at_level(logging.WARNING, logger="datasets.coco"):
        dataset = CocoDataset(path, skip_invalid=True)
    assert dataset.skipped == {"images": 2, "annotations": 2}
    assert [dataset[i].image_id for i in range(len(dataset))] == [1, 2]
    assert [len(dataset[i].boxes) for i in range(len(dataset))] == [1, 0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "category_id" in warnings[0].getMessage() and "passwd" in warnings[0].getMessage()


def test_undecodable_image_fails_on_read_or_is_replaced_when_skipping(tmp_path, kit):
    path = kit.write(tmp_path, [kit.image(1), kit.image(2)], [])
    (tmp_path / "img/1.png").write_bytes(b"not a png")
    strict = CocoDataset(path)  # decoding is lazy: construction succeeds
    with pytest.raises(ValueError) as error:
        strict[0]
    assert "annotations.json" in str(error.value) and "images[0]" in str(error.value)

    lenient = CocoDataset(path, skip_invalid=True)
    assert lenient[0].image_id == 2
    assert lenient.skipped["images"] == 1


def test_image_whose_size_differs_from_its_entry_is_rejected(tmp_path, kit):
    path = kit.write(tmp_path, [kit.image(1, height=32, width=32)], [], create_files=False)
    kit.write_image(tmp_path / "img/1.png", 16, 32)
    with pytest.raises(ValueError, match=r"images\[0\].*32x32.*32x16"):
        CocoDataset(path)[0]
