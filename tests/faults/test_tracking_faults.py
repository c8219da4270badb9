"""Tracking stores that cannot work: a URI no MLflow store can answer to, a sqlite folder that cannot be made,
a run the store does not have. Each is one named error line and exit status 2 naming where the URI came from,
before any run starts; only a store that cannot be reached now (connection refused, timeout) lets training go
on locally (tests/pipeline/test_tracking.py)."""
from __future__ import annotations

import os

import pytest
import yaml

from pipeline.jobs.cli import main
from pipeline.config.schema import TrackingConfig
from pipeline.tracking.tracker import Tracker
from pipeline.config.typed import ConfigError

CONFIG = {
    "name": "faults",
    "data": {"format": "coco", "train": "data/train.json", "val": "data/val.json", "image_size": 32},
    "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
    "train": {"epochs": 1, "device": "cpu"},
}
EXPECTED_FORMS = "expected http(s)://host:port, sqlite:///path, file:/path or a folder"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so a relative store path that is wrongly made shows up there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    return tmp_path


def run(command: str, folder, capsys, raw: dict, *overrides: str) -> tuple[int, str]:
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    status = main([command, str(config), f"output_dir={folder / 'runs'}", *overrides])
    return status, capsys.readouterr().err


def assert_named_error(status: int, err: str, *names: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("uri, why", [
    ("htp://x", "unknown scheme 'htp' (did you mean 'http'?)"),
    ("sqlite:/relative-missing-slashes", "three slashes"),
    ("sqlite:mlflow.db", "three slashes"),
    ("foo", "MLFLOW_ALLOW_FILE_STORE=true"),        # a folder store, which MLflow 3 refuses by default
    ("http://", "no host"),
    ("http:/mlflow-host", "no host"),
    ("localhost:5000", "http://localhost:5000"),
    ("http://mlflow-host:port", "not a URI"),
])
def test_a_uri_no_store_can_answer_to_is_named_before_any_run(in_tmp, capsys, uri, why):
    status, err = run("compare", in_tmp, capsys, CONFIG, f"tracking.uri={uri}")
    assert_named_error(status, err, f"tracking.uri: {uri!r}: ", why, EXPECTED_FORMS)
    assert sorted(os.listdir(in_tmp)) == ["config.yaml"]     # no store, no local run, no run folder


def test_train_stops_on_such_a_uri_before_any_run_or_store_exists(in_tmp, capsys):
    data = in_tmp / "data"
    raw = {**CONFIG, "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                              "image_size": 32, "batch_size": 8, "num_workers": 0,
                              "shapes": {"train_images": 16, "val_images": 8}}}
    status, err = run("train", in_tmp, capsys, raw, "tracking.uri=htp://mlflow-host:5000")
    assert_named_error(status, err, "tracking.uri: 'htp://mlflow-host:5000': unknown scheme 'htp'")
    assert sorted(os.listdir(in_tmp)) == ["config.yaml"]      # checked before the data is even generated


def test_a_uri_from_the_environment_is_named_as_such(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://mlflow-host:5000")
    status, err = run("compare", in_tmp, capsys, CONFIG)
    assert_named_error(status, err, "MLFLOW_TRACKING_URI: 'htp://mlflow-host:5000': unknown scheme 'htp'")


def test_a_sqlite_store_whose_folder_cannot_be_made_is_named_not_run_locally(in_tmp, capsys):
    (in_tmp / "a-file").write_text("not a folder\n")
    uri = f"sqlite:///{in_tmp}/a-file/store/mlflow.db"
    status, err = run("compare", in_tmp, capsys, CONFIG, f"tracking.uri={uri}")
    assert_named_error(status, err, f"tracking.uri: {uri!r}: MLflow cannot open a run there", "Not a directory")
    assert sorted(os.listdir(in_tmp)) == ["a-file", "config.yaml"]


def test_resuming_a_run_the_store_does_not_have_is_named_not_run_locally(tmp_path):
    """The store answers, and no waiting makes the run appear: going on locally would only hide that."""
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="faults"))
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ConfigError, match=rf"tracking.uri: .*MLflow cannot open a run there: .*{missing}"):
        tracker.start({}, {}, resume_run_id=missing)
    assert not tracker.online and tracker.run_id is None
