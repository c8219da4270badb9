"""Data faults found before the first step: a corrupt image in either split, an empty split, a task without
labels, an empty annotation file. Each stops `train` with exit status 2 and a message naming the file and what
was expected, before any run folder, MLflow store or model exists; with data.skip_invalid an unreadable image
is instead dropped from its split (counted, logged), so the loader never meets it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from datasets.mixture import MixtureDataset
from pipeline.data_check.guard import require_trainable
from pipeline.jobs.cli import main
from pipeline.config.schema import parse_config
from pipeline.engine.data import build_splits

SIZE = 32


def gradient(side: int = SIZE) -> np.ndarray:
    """Not constant, so the guard's constant-image rule stays quiet unless a test wants it."""
    ramp = np.linspace(0, 200, side).round().astype(np.uint8)
    return np.repeat(np.tile(ramp, (side, 1))[..., None], 3, axis=2)


def square(x: int, y: int, side: int) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def write_coco(root: Path, count: int = 4, annotate: bool = True) -> Path:
    """`count` 32 px gradient images, each with one 12 px square object (box and polygon) of class a or b."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        cv2.imwrite(str(root / f"images/{i}.png"), gradient())
        images.append({"id": i + 1, "file_name": f"images/{i}.png", "width": SIZE, "height": SIZE})
        if annotate:
            annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [8, 8, 12, 12],
                                "segmentation": [square(8, 8, 12)], "iscrowd": 0})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


def raw_config(tmp_path: Path, train: Path, val: Path, heads: dict | None = None, **data) -> dict:
    return {
        "name": "faults", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(train), "val": str(val), "image_size": SIZE, "batch_size": 2, "num_workers": 0, **data},
        "model": {"backbone": {"name": "lenet5"}, "heads": heads or {"cls": {"type": "classification"}}},
        "train": {"epochs": 1, "device": "cpu"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "faults"},
    }


def train(tmp_path: Path, capsys, raw: dict) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    status = main(["train", str(path)])
    return status, capsys.readouterr().err


def assert_refused_before_anything(tmp_path: Path, status: int, err: str, *expected: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def corrupt(path: Path, how: str) -> None:
    if how == "not an image":
        path.write_bytes(b"this is not a PNG")
    else:  # a download cut short: the header is intact, the pixel data and the end are not
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---- unreadable images --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["not an image", "truncated"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_corrupt_image_in_either_split_stops_training_naming_it(tmp_path, capsys, split, how):
    """11 of 12 images read: the old guard passed it (some of 8 decoded images read); the first epoch, or the
    first validation, failed."""
    paths = {name: write_coco(tmp_path / name, count=12) for name in ("train", "val")}
    bad = tmp_path / split / "images/4.png"
    corrupt(bad, how)
    status, err = train(tmp_path, capsys, raw_config(tmp_path, paths["train"], paths["val"]))
    assert_refused_before_anything(tmp_path, status, err, f"data.{split}", "1 image(s) cannot be read",
                                   str(bad), "images[4].file_name: expected a decodable image")


@pytest.mark.parametrize("split", ["train", "val"])
def test_with_skip_invalid_a_corrupt_image_is_dropped_before_training_counted_and_logged(tmp_path, caplog, split):
    paths = {name: write_coco(tmp_path / name) for name in ("train", "val")}
    bad = tmp_path / split / "images/2.png"
    corrupt(bad, "truncated")
    config = parse_config(raw_config(tmp_path, paths["train"], paths["val"], skip_invalid=True))
    splits = build_splits(config.data)
    with caplog.at_level(logging.WARNING, logger="datasets.reader"):
        require_trainable(splits, config)
    dataset = getattr(splits, split)
    assert len(dataset) == 3 and bad not in dataset.image_paths()
    assert dataset.skipped["images"] == 1 and str(bad) in dataset.problems[0]
    assert any("dropped 1 unreadable image(s)" in r.message and str(bad) in r.message for r in caplog.records)
    assert [dataset[i].orig_size for i in range(len(dataset))] == [(SIZE, SIZE)] * 3  # every entry reads


def test_with_skip_invalid_a_mixture_recounts_its_sources_after_a_drop(tmp_path):
    coco = write_coco(tmp_path / "coco")
    corrupt(tmp_path / "coco/images/3.png", "not an image")
    images = tmp_path / "raw"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), gradient())
    raw = raw_config(tmp_path, coco, coco, skip_invalid=True)
    del raw["data"]["train"], raw["data"]["val"]
    raw["data"]["sources"] = [{"name": "coco", "format": "coco", "train": str(coco), "val": str(coco)},
                              {"name": "raw", "format": "images", "train": str(images)}]
    config = parse_config(raw)
    splits = build_splits(config.data)
    require_trainable(splits, config)
    assert isinstance(splits.train, MixtureDataset)
    assert splits.train.sizes == [3, 2] and len(splits.train) == 5
    assert splits.train[4].image.shape[-2:] == (SIZE, SIZE)   # the last index is the raw source's last image


def test_an_image_larger_than_declared_stops_training_before_the_first_step(tmp_path, capsys):
    """12 images: more than the guard decodes, so the header pass must find it (it reads every image's size)."""
    paths = {"train": write_coco(tmp_path / "train"), "val": write_coco(tmp_path / "val", count=12)}
    cv2.imwrite(str(tmp_path / "val/images/4.png"), gradient(40))
    status, err = train(tmp_path, capsys, raw_config(tmp_path, paths["train"], paths["val"]))
    assert_refused_before_anything(tmp_path, status, err, "data.val", "images[4]: expected a 32x32 image as "
                                   "declared by width/height, the header of images/4.png says 40x40")


def test_a_mask_of_another_size_than_its_image_stops_training_naming_the_mask(tmp_path, capsys):
    for split in ("train", "val"):
        root = tmp_path / split
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        (root / "classes.txt").write_text("a\nb\n")
        for i in range(4):
            cv2.imwrite(str(root / f"images/{i}.png"), gradient())
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[4:20, 4:20] = 1 + i % 2
            cv2.imwrite(str(root / f"masks/{i}.png"), mask)
    cv2.imwrite(str(tmp_path / "val/masks/3.png"), np.zeros((SIZE, 24), np.uint8))
    raw = raw_config(tmp_path, tmp_path / "train", tmp_path / "val", {"seg": {"type": "unet"}}, format="masks")
    raw["model"]["backbone"] = {"name": "resnet18", "pretrained": False}
    status, err = train(tmp_path, capsys, raw)
    assert_refused_before_anything(tmp_path, status, err, f"{tmp_path / 'val/masks/3.png'}: expected the size of "
                                   "its image 3.png, 32x32, got 24x32")


# ---- empty splits and annotation files --------------------------------------------------------------------


def test_a_validation_split_without_images_stops_training_naming_it(tmp_path, capsys):
    train_file = write_coco(tmp_path / "train")
    val_file = write_coco(tmp_path / "val", count=0)
    status, err = train(tmp_path, capsys, raw_config(tmp_path, train_file, val_file))
    assert_refused_before_anything(tmp_path, status, err, f"data.val (val, {val_file}): the validation split has no "
                                   "images")


@pytest.mark.parametrize("text", ["", "  \n", None])
def test_an_empty_training_annotation_file_says_the_training_split_has_no_images(tmp_path, capsys, text):
    """An empty file was an uncaught JSON error (a traceback); an empty images list must not reach the trainer
    (whose first error blamed train.accumulate)."""
    val_file = write_coco(tmp_path / "val")
    if text is None:
        train_file = write_coco(tmp_path / "train", count=0)
    else:
        train_file = tmp_path / "train.json"
        train_file.write_text(text)
    status, err = train(tmp_path, capsys, raw_config(tmp_path, train_file, val_file))
    assert_refused_before_anything(tmp_path, status, err, "data.train", str(train_file), "no images")
    assert "train.accumulate" not in err and "has no instance" not in err  # no noise about classes of no images


# ---- tasks without labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("head, target", [({"cls": {"type": "classification"}}, "no image labels"),
                                          ({"seg": {"type": "unet"}}, "no masks")])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_with_images_but_no_annotations_names_the_task_without_labels(tmp_path, capsys, head, target,
                                                                              split):
    """Both losses were exactly 0 at every step without a word (a missing target is skipped, not an error)."""
    paths = {name: write_coco(tmp_path / name, annotate=name != split) for name in ("train", "val")}
    raw = raw_config(tmp_path, paths["train"], paths["val"], head)
    raw["model"]["backbone"] = {"name": "resnet18", "pretrained": False}
    status, err = train(tmp_path, capsys, raw)
    (task,) = head
    assert_refused_before_anything(tmp_path, status, err, f"model.heads.{task} ({head[task]['type']}): {target}",
                                   f"data.{split} ({split}, {paths[split]})")


def test_a_segmentation_head_on_a_box_only_set_is_refused_but_a_full_set_passes(tmp_path):
    paths = {name: write_coco(tmp_path / name) for name in ("train", "val")}
    heads = {"cls": {"type": "classification"}, "seg": {"type": "unet"}, "det": {"type": "yolo"}}
    config = parse_config(raw_config(tmp_path, paths["train"], paths["val"], heads))
    require_trainable(build_splits(config.data), config)   # boxes, outlines, classes: every head has labels
    for path in paths.values():
        data = json.loads(path.read_text())
        for ann in data["annotations"]:
            del ann["segmentation"]
        path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as raised:
        require_trainable(build_splits(config.data), config)
    message = str(raised.value)
    assert "model.heads.seg (unet): no masks" in message and "model.heads.cls" not in message
    assert "model.heads.det" not in message
