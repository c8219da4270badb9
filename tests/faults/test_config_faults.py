"""Bad config values and files: each is one named error line and exit status 2 before anything runs, and
nothing is written: no run folder, no MLflow store."""
from __future__ import annotations

import pytest
import yaml

from pipeline.jobs.cli import main

VALID = {
    "name": "faults",
    "data": {"format": "coco", "train": "data/train.json", "val": "data/val.json", "image_size": 32},
    "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
    "train": {"epochs": 1},
}


def run_train(tmp_path, capsys, text: str, *overrides: str) -> tuple[int, str]:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    where = [f"output_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    status = main(["train", str(config), *where, *overrides])
    return status, capsys.readouterr().err


def assert_named_error(status: int, err: str, *names: str) -> None:
    assert status == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "weights_only=False" not in err
    for name in names:
        assert name in err, (name, err)


def assert_nothing_written(tmp_path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("override, key, expected", [
    ("train.epochs=0", "train.epochs", ">= 1"),
    ("train.epochs=-3", "train.epochs", ">= 1"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.batch_size=-2", "data.batch_size", ">= 1"),
    ("data.image_size=0", "data.image_size", ">= 32"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("data.channels=0", "data.channels", "a positive number of channels"),
    ("data.alpha_background=1.5", "data.alpha_background", "a grey level in [0, 1]"),
    ("data.augment.hflip_p=1.5", "data.augment.hflip_p", "[0, 1]"),
    ("data.augment.scale=[1.2,0.8]", "data.augment.scale", "low <= high"),
    ("data.shapes.max_shapes=0", "data.shapes.max_shapes", ">= 1"),
    ("train.accumulate=0", "train.accumulate", ">= 1"),
    ("train.ema_decay=1", "train.ema_decay", "[0, 1)"),
    ("train.optimizer.lr=-1e-3", "train.optimizer.lr", ">= 0"),
    ("train.optimizer.weight_decay=-1e-4", "train.optimizer.weight_decay", ">= 0"),
    ("train.grad_clip=0", "train.grad_clip", "> 0"),
    ("model.heads.cls.weight=-1", "model.heads.cls.weight", ">= 0"),
    ("model.backbone.name=lenet", "model.backbone.name", "'lenet5'"),
    ("model.backbone.name=timm:not_a_model", "model.backbone.name", "timm.list_models()"),
])
def test_an_out_of_range_value_is_named_before_anything_runs(tmp_path, capsys, override, key, expected):
    status, err = run_train(tmp_path, capsys, yaml.safe_dump(VALID), override)
    assert_named_error(status, err, "config.yaml", key, expected)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("- model\n- data\n", "expected a mapping of sections"),
    ("just a string\n", "expected a mapping of sections"),
    ("name: x\nmodel: {heads: [\n", "config.yaml:3:1: invalid YAML"),
    ("name: x\n  data: y: z\n", "config.yaml:2:"),
])
def test_a_file_that_is_not_a_config_mapping_is_one_line(tmp_path, capsys, text, expected):
    status, err = run_train(tmp_path, capsys, text)
    assert_named_error(status, err, expected)
    assert_nothing_written(tmp_path)


def test_a_malformed_override_value_names_the_override(tmp_path, capsys):
    status, err = run_train(tmp_path, capsys, yaml.safe_dump(VALID), "train.optimizer.lr=[1,")
    assert_named_error(status, err, "override 'train.optimizer.lr=[1,'", "invalid YAML")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("override, expected", [
    ("data.shapes.train_imagez=16", "data.shapes.train_imagez: unknown key. Did you mean 'train_images'?"),
    ("data.shapes=16", "data.shapes: expected a mapping, got 16"),
    ("model.backbone.stage_lr=[1.0,fast]", "model.backbone.stage_lr[1]: expected float, got 'fast'"),
])
def test_an_error_inside_an_optional_value_names_the_nested_key(tmp_path, capsys, override, expected):
    """A section or list that may also be null: the error is the one inside it, not "expected X or NoneType"."""
    status, err = run_train(tmp_path, capsys, yaml.safe_dump(VALID), override)
    assert_named_error(status, err, "config.yaml", expected)
    assert_nothing_written(tmp_path)
