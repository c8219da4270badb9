"""`eval CHECKPOINT --data FILE` on data that cannot be evaluated: one named line, exit 2, nothing written."""
from __future__ import annotations

import json

import pytest
import yaml

from pipeline.jobs.cli import main

CLASSES = [(1, "circle"), (2, "square"), (3, "triangle")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_faults")
    config = {"name": "tiny", "seed": 3, "output_dir": str(folder / "runs"),
              "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
              "data": {"train": str(folder / "data/train/annotations.json"),
                       "val": str(folder / "data/val/annotations.json"), "image_size": 32, "batch_size": 4,
                       "num_workers": 0, "shapes": {"train_images": 8, "val_images": 4}},
              "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
              "train": {"epochs": 1, "device": "cpu"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(folder / "config.yaml")]) == 0
    (path,) = (folder / "runs" / "tiny").glob("*/last.pt")
    return folder, path


@pytest.mark.parametrize("content, expected", [
    ("", "empty"),
    ("{not json", "json"),
    ({"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in CLASSES]}, "images"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}], "annotations": [],
      "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}, "expected the classes ['circle', 'square', 'triangle']"),
])
def test_eval_on_data_it_cannot_read_is_a_named_error(checkpoint, tmp_path, capsys, content, expected):
    folder, path = checkpoint
    data = tmp_path / "other.json"
    data.write_text(content if isinstance(content, str) else json.dumps(content))
    (tmp_path / "a.png").write_bytes((folder / "data/val/images").iterdir().__next__().read_bytes())
    status = main(["eval", str(path), "--data", str(data), "--images", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and str(data) in err and expected.lower() in err.lower(), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
