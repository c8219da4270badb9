"""check-data and the guard before training, on tiny planted datasets (32-64 px)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from datasets.shapes import generate_shapes
from pipeline.config.typed import DataCheckError
from pipeline.data_check.drawing import CLASS_COLOURS
from pipeline.data_check.guard import box_scale_problem, check_trainable
from pipeline.data_check.report import run_check_data
from pipeline.data_check.text import render_text
from pipeline.jobs.cli import main
from pipeline.config.schema import parse_config
from pipeline.engine.data import build_splits
from pipeline.jobs.train import run_training

SIZE = 64


# ---- tiny datasets ------------------------------------------------------------------------------------


def gradient(size: int = SIZE) -> np.ndarray:
    """8-bit RGB with values 0..200: not constant, so only what a test plants is."""
    ramp = np.linspace(0, 200, size).round().astype(np.uint8)
    return np.repeat(np.tile(ramp, (size, 1))[..., None], 3, axis=2)


def write_coco(root: Path, images: dict[str, np.ndarray], boxes: list[tuple[str, int, list]],
               names: tuple[str, ...] = ("a", "b"), declared: dict[str, int] | None = None) -> Path:
    """images/<name> written from the arrays (declared SIZE x SIZE unless `declared` says otherwise);
    boxes: (file, category id, [x, y, w, h])."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries, ids = [], {}
    for i, (name, array) in enumerate(images.items(), start=1):
        cv2.imwrite(str(root / "images" / name), array)
        side = (declared or {}).get(name, SIZE)
        entries.append({"id": i, "file_name": f"images/{name}", "width": side, "height": side})
        ids[name] = i
    annotations = [{"id": k, "image_id": ids[name], "category_id": category, "bbox": bbox, "iscrowd": 0}
                   for k, (name, category, bbox) in enumerate(boxes, start=1)]
    categories = [{"id": i, "name": name} for i, name in enumerate(names, start=1)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def healthy(root: Path) -> Path:
    return write_coco(root, {f"{i}.png": gradient() for i in range(4)},
                      [(f"{i}.png", 1 + i % 2, [8, 8, 30, 30]) for i in range(4)])


def raw_config(tmp_path: Path, train: Path, val: Path, heads: dict | None = None, **data) -> dict:
    return {
        "name": "look", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(train), "val": str(val), "image_size": SIZE, "batch_size": 2, "num_workers": 0,
                 "augment": {"hflip_p": 0.0, "affine_p": 0.0, "color_p": 0.0}, **data},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": heads or {"det": {"type": "yolo"}}},
        "train": {"epochs": 1, "device": "cpu"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "look"},
    }


def black_set(root: Path) -> Path:
    return write_coco(root, {f"{i}.png": np.zeros((SIZE, SIZE, 3), np.uint8) for i in range(3)},
                      [(f"{i}.png", 1 + i % 2, [8, 8, 30, 30]) for i in range(3)])


# ---- check-data --------------------------------------------------------------------------------------


def test_check_data_names_every_planted_defect_with_its_file_and_reason(tmp_path):
    images = {"good.png": gradient(), "undecodable.png": gradient(), "bigger.png": gradient(40),
              "black16.png": np.zeros((SIZE, SIZE), np.uint16), "empty.png": gradient()}
    train = write_coco(tmp_path / "train", images,
                       [("good.png", 1, [4, 4, 30, 30]), ("good.png", 2, [30, 30, 20, 20]),
                        ("undecodable.png", 1, [4, 4, 20, 20]), ("bigger.png", 2, [4, 4, 20, 20]),
                        ("black16.png", 1, [4, 4, 20, 20]), ("good.png", 1, [10, 10, -5, 8])],
                       names=("a", "b", "c"), declared={"bigger.png": 32})
    (tmp_path / "train/images/undecodable.png").write_bytes(b"this is not a PNG")
    config = parse_config(raw_config(tmp_path, train, train, skip_invalid=True))
    report = run_check_data(config, tmp_path / "out", samples=2)

    folder = tmp_path / "train/images"
    saved = json.loads((tmp_path / "out/check_data.json").read_text())
    (source,) = saved["splits"]["train"]["sources"]
    reasons = {problem["path"]: problem["reason"] for problem in source["problems"] if problem["path"]}
    assert "could not decode" in reasons[str(folder / "undecodable.png")]
    assert "expected a 32x32 image as declared" in reasons[str(folder / "bigger.png")]
    assert any("annotations[5].bbox" in p["reason"] and "w, h > 0" in p["reason"] for p in source["problems"])
    assert source["constant_images"] == [str(folder / "black16.png")]
    assert source["unlabelled_images"] == [str(folder / "empty.png")]
    assert "uint16" in source["raw_dtypes"]
    assert [c["name"] for c in saved["splits"]["train"]["class_totals"] if c["boxes"] == 0] == ["c"]
    assert any("class 'c' has no instance" in error for error in saved["errors"])

    text = render_text(report)
    lines = text.splitlines()
    for path, reason in [("undecodable.png", "could not decode"), ("bigger.png", "decoded 40x40"),
                         ("annotations.json", "annotations[5].bbox"), ("black16.png", "constant after the policy"),
                         ("empty.png", "no label at all")]:
        assert any(path in line and reason in line for line in lines), (path, reason)
    assert text.index("ERRORS") < text.index("split train")  # what stops training comes first


def test_sample_grid_shows_the_box_in_its_class_colour(tmp_path):
    """One 40 px box of class a on a black image, no augmentation: 64 px is enlarged 3x to 192 px, padded 2."""
    train = write_coco(tmp_path / "d", {"0.png": np.zeros((SIZE, SIZE, 3), np.uint8)}, [("0.png", 1, [8, 8, 40, 40])])
    report = run_check_data(parse_config(raw_config(tmp_path, train, train)), tmp_path / "out", samples=1)

    grid = np.asarray(Image.open(report.samples_png).convert("RGB"))
    assert grid.shape == (2 + 192 + 2, 2 + 192 + 2, 3)
    pad, scale = 2, 3
    left, right, top, bottom = (pad + scale * v for v in (8, 48, 8, 48))
    middle = (top + bottom) // 2
    assert tuple(grid[middle, left]) == CLASS_COLOURS[0]             # left edge
    assert tuple(grid[bottom - 1, (left + right) // 2]) == CLASS_COLOURS[0]   # bottom edge
    assert tuple(grid[middle, right - 1]) == CLASS_COLOURS[0]        # right edge
    assert tuple(grid[middle, (left + right) // 2]) == (0, 0, 0)     # the box is outlined, not filled
    assert tuple(grid[middle, left - 6]) == (0, 0, 0)                # nothing outside it


def test_detection_head_report_relates_boxes_to_strides_and_anchors(tmp_path):
    train = healthy(tmp_path / "d")
    heads = {"det": {"type": "yolo", "anchors": [[[2, 2]], [[3, 3]], [[4, 4]]]}, "grid": {"type": "yolo_v1"}}
    report = run_check_data(parse_config(raw_config(tmp_path, train, train, heads)), tmp_path / "out", samples=0)
    det, grid = report.heads
    assert det.strides == [8, 16, 32] and det.anchors == [[[2.0, 2.0]], [[3.0, 3.0]], [[4.0, 4.0]]]
    assert det.median_longer_side == 30.0 and det.below_finest_stride == 0.0
    assert dict(det.histogram) == {"<4": 0, "4-8": 0, "8-16": 0, "16-32": 4, "32-64": 0, ">=64": 0}
    assert det.poorly_covered == 1.0   # 30 px boxes against anchors of at most 4 px
    assert any("model.heads.det" in w and "anchors: auto" in w for w in report.warnings)
    assert grid.strides == [32] and grid.anchors is None and dict(grid.histogram)["16-32"] == 4


# ---- the guard ---------------------------------------------------------------------------------------


def test_training_on_images_the_policy_makes_flat_stops_naming_data_intensity(tmp_path):
    """12-bit-style values 0..212 in 16-bit files read with intensity [0, 65535]: under one grey level."""
    ramp = np.tile(np.linspace(0, 212, SIZE).astype(np.uint16), (SIZE, 1))
    train = write_coco(tmp_path / "d", {f"{i}.png": ramp for i in range(3)},
                       [(f"{i}.png", 1 + i % 2, [8, 8, 30, 30]) for i in range(3)])
    config = parse_config(raw_config(tmp_path, train, train, intensity=[0, 65535]))
    with pytest.raises(DataCheckError, match="data.intensity") as raised:
        run_training(config)
    assert "values 0..212" in str(raised.value) and "0.png" in str(raised.value)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_training_with_a_class_that_has_no_instance_stops_naming_it(tmp_path):
    train = write_coco(tmp_path / "d", {f"{i}.png": gradient() for i in range(4)},
                       [(f"{i}.png", 1 + i % 2, [8, 8, 30, 30]) for i in range(4)], names=("a", "b", "unused"))
    config = parse_config(raw_config(tmp_path, train, train, {"cls": {"type": "classification"}}))
    with pytest.raises(DataCheckError) as raised:
        run_training(config)
    message = str(raised.value)
    assert "class 'unused' has no instance" in message and "'a'" not in message and "'b'" not in message
    assert not (tmp_path / "runs").exists()


def test_training_on_boxes_below_half_the_finest_stride_stops_naming_the_stride(tmp_path):
    train = write_coco(tmp_path / "d", {f"{i}.png": gradient() for i in range(4)},
                       [(f"{i}.png", 1 + i % 2, [20, 20, 3, 2]) for i in range(4)])
    with pytest.raises(DataCheckError, match=r"model.heads.det \(yolo\).*finest stride 8") as raised:
        run_training(parse_config(raw_config(tmp_path, train, train)))
    assert "data.image_size (about 86" in str(raised.value)  # 64 * 4 / 3: the 3 px median becomes 4 px
    assert not (tmp_path / "runs").exists()


def test_box_rule_threshold_is_half_the_finest_stride(tmp_path):
    config = parse_config(raw_config(tmp_path, Path("t.json"), Path("v.json"),
                                     {"det": {"type": "yolo", "strides": [16, 32]}}))
    head = config.model.heads["det"]
    at = np.array([[8, 3, SIZE, SIZE]] * 3, np.float32)     # longer side 8 = 16 / 2: resolvable
    below = np.array([[7.9, 7.9, SIZE, SIZE]] * 3, np.float32)
    assert box_scale_problem("det", head, at, config) is None
    assert "finest stride 16" in box_scale_problem("det", head, below, config)


def test_a_healthy_shapes_set_passes_the_guard(tmp_path):
    train = generate_shapes(tmp_path / "train", num_images=8, image_size=SIZE, seed=0)
    val = generate_shapes(tmp_path / "val", num_images=4, image_size=SIZE, seed=1)
    heads = {"cls": {"type": "classification"}, "seg": {"type": "unet"}, "det": {"type": "yolo"},
             "grid": {"type": "yolo_v1"}}
    config = parse_config(raw_config(tmp_path, train, val, heads))
    assert check_trainable(build_splits(config.data), config) == []


# ---- the command -------------------------------------------------------------------------------------


def test_cli_exits_0_on_good_data_and_logs_the_grid_when_tracking(tmp_path, capsys):
    train = healthy(tmp_path / "d")
    path = tmp_path / "good.yaml"
    path.write_text(json.dumps(raw_config(tmp_path, train, train)))  # JSON is YAML
    assert main(["check-data", str(path), "--samples", "2", "--track"]) == 0
    out = capsys.readouterr().out
    assert "no errors" in out and "ERRORS" not in out
    assert (tmp_path / "runs/look/check-data/samples.png").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("look").experiment_id])
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "check-data")}
    assert logged == {"check-data/samples.png", "check-data/check_data.json"}


def test_cli_exits_1_on_all_black_images_with_the_errors_first(tmp_path, capsys):
    train = black_set(tmp_path / "d")
    path = tmp_path / "black.yaml"
    path.write_text(json.dumps(raw_config(tmp_path, train, train)))
    assert main(["check-data", str(path), "--out", str(tmp_path / "out"), "data.batch_size=1"]) == 1
    out = capsys.readouterr().out
    assert out.index("ERRORS") < out.index("split train") and "data.intensity" in out
    assert (tmp_path / "out/check_data.json").is_file() and not (tmp_path / "runs").exists()
