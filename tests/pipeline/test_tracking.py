"""Tracking without a server: run tags, plots, the exported model, the tracker on sqlite, the metric sender."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from heads.base import Head
from pipeline.config.schema import TrackingConfig, parse_config
from pipeline.inference.named_outputs import NamedOutputsModel
from pipeline.tracking.model_logging import exportable, input_example
from pipeline.tracking.sender import Backoff, MetricSender
from pipeline.model import build_model
from pipeline.tracking.plots import confusion_matrix_figure, loss_curves, prediction_figure, run_figures
from pipeline.tracking.run_log import MetricRecord, read_run_log
from pipeline.tracking.tags import run_tags
from pipeline.tracking.http_limits import HttpLimits
from pipeline.tracking.tracker import Tracker, resolve_uri
from support import free_port, make_batch


def config_for(train: Path, val: Path, format: str = "coco"):
    return parse_config({"data": {"train": str(train), "val": str(val), "format": format},
                         "model": {"heads": {"cls": {"type": "classification"}}}})


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def coco_file(path: Path, description: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {"description": description} if description else {}, "images": [],
                                "annotations": [], "categories": []}))
    return path


def tiny_model():
    config = parse_config({"data": {"train": "unused", "val": "unused"},
                           "model": {"backbone": {"name": "resnet18", "pretrained": False},
                                     "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"},
                                               "det": {"type": "yolo"}, "recon": {"type": "vae"}}}})
    torch.manual_seed(0)
    return build_model(config.model, num_classes=3)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    """One local store for the module: MLflow takes seconds to create a database."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


# ---- run tags ---------------------------------------------------------------------------------------------

def test_run_tags_name_the_commit_and_whether_tracked_files_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "code.py").write_text("a = 1\n")
    git(repo, "add", "code.py")
    git(repo, "commit", "-q", "-m", "first")
    train = coco_file(tmp_path / "data/train/annotations.json", None)
    config = config_for(train, train)

    clean = run_tags(config, ["python", "-m", "pipeline", "train", "x.yaml"], repo=repo)
    (repo / "notes.txt").write_text("untracked files do not change the code that ran\n")
    untracked = run_tags(config, [], repo=repo)
    (repo / "code.py").write_text("a = 2\n")
    dirty = run_tags(config, [], repo=repo)

    assert clean["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert (clean["git.dirty"], untracked["git.dirty"], dirty["git.dirty"]) == ("false", "false", "true")
    assert clean["command"] == "python -m pipeline train x.yaml"
    assert clean["mlflow.source.name"] == "python -m pipeline train"


def test_outside_a_repository_the_commit_is_unknown_and_nothing_fails(tmp_path):
    train = coco_file(tmp_path / "data/train/annotations.json", None)
    tags = run_tags(config_for(train, train), [], repo=tmp_path)
    assert tags["mlflow.source.git.commit"] == "unknown" and tags["git.dirty"] == "unknown"


def test_dataset_tags_name_each_split_and_hash_its_annotations(tmp_path):
    train = coco_file(tmp_path / "shapes/train/annotations.json", "synthetic shapes")
    val = coco_file(tmp_path / "shapes/val/annotations.json", None)
    tags = run_tags(config_for(train, val), [], repo=tmp_path)
    assert tags["data.train.name"] == "synthetic shapes"      # COCO info.description
    assert tags["data.val.name"] == "val"                     # no description: the folder
    assert tags["data.train.sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert tags["data.train"] == str(train)


def test_an_image_folder_is_hashed_by_its_file_list(tmp_path):
    root = tmp_path / "flowers"
    for name in ("daisy/1.png", "rose/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"png")
    before = run_tags(config_for(root, root, "imagefolder"), [], repo=tmp_path)
    (root / "rose/3.png").write_bytes(b"png")
    after = run_tags(config_for(root, root, "imagefolder"), [], repo=tmp_path)
    assert before["data.train.name"] == "flowers"
    assert before["data.train.sha256"] != after["data.train.sha256"]


# ---- plots ------------------------------------------------------------------------------------------------

def records(history: list[tuple[int, dict[str, float]]]) -> list[MetricRecord]:
    return [MetricRecord(key, value, step, 1000 * step) for step, values in history for key, value in values.items()]


def test_loss_curves_draw_one_line_per_loss_on_a_log_scale():
    history = [(step, {"train/loss": 2.0 / step, "train/cls/loss": 1.0 / step, "train/seg/loss": 0.5 / step,
                       "lr": 0.01, "train/grad_norm": 3.0, "epoch/train/loss": 1.0}) for step in range(5, 0, -1)]
    axes = loss_curves(records(history)).axes
    assert len(axes) == 1
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(lines) == {"train/loss", "train/cls/loss", "train/seg/loss"}
    assert list(lines["train/cls/loss"].get_xdata()) == [1, 2, 3, 4, 5]
    assert axes[0].get_yscale() == "log"


def test_loss_curves_skip_non_finite_values_and_stay_linear_for_non_positive_losses():
    history = [(1, {"train/loss": -1.0}), (2, {"train/loss": float("nan")}), (3, {"train/loss": 0.5})]
    axes = loss_curves(records(history)).axes[0]
    assert list(axes.get_lines()[0].get_xdata()) == [1, 3]
    assert axes.get_yscale() == "linear"


def test_confusion_matrix_figure_writes_every_count():
    matrix = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    figure = confusion_matrix_figure(matrix, ["circle", "square", "triangle"])
    (axes,) = figure.axes[:1]
    assert sorted(t.get_text() for t in axes.texts) == sorted(str(v) for v in matrix.flatten().tolist())
    assert [t.get_text() for t in axes.get_xticklabels()] == ["circle", "square", "triangle"]


def test_multi_label_confusion_matrices_get_one_panel_per_class():
    matrices = torch.tensor([[[3, 1], [0, 4]], [[5, 0], [1, 2]]])
    figure = confusion_matrix_figure(matrices, ["cat", "dog"])
    titled = [a for a in figure.axes if a.get_title()]
    assert [a.get_title() for a in titled] == ["cat", "dog"]


def test_prediction_figure_draws_each_kind_of_prediction():
    images = torch.rand(2, 3, 32, 32)
    predictions = {
        "cls": torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]),
        "seg": torch.zeros(2, 32, 32, dtype=torch.long),
        "det": [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([2])},
                {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
        "recon": torch.rand(2, 3, 32, 32),
    }
    kinds = {"cls": "classification", "seg": "segmentation", "det": "detection", "recon": "reconstruction"}
    figure = prediction_figure(images, predictions, kinds, ["circle", "square", "triangle"])
    axes = figure.axes
    assert len(axes) == 2 * 3                       # per image: input (+ boxes, class), mask, reconstruction
    assert axes[0].get_title() == "cls: square 0.80" and axes[3].get_title() == "cls: circle 0.60"
    assert len(axes[0].patches) == 1 and len(axes[3].patches) == 0
    assert axes[0].texts[0].get_text() == "triangle 0.90"
    assert [axes[1].get_title(), axes[2].get_title()] == ["seg", "recon"]


def test_run_figures_draw_the_model_in_eval_mode_and_leave_it_training():
    model = tiny_model()
    model.train()
    history = [(1, {"train/loss": 1.0}), (2, {"train/loss": 0.5})]
    figures = run_figures(records(history), {"cls": torch.eye(3, dtype=torch.long)}, model, make_batch(size=64, batch=3),
                          ["a", "b", "c"])
    assert set(figures) == {"plots/losses.png", "plots/confusion/cls.png", "plots/predictions.png"}
    assert len(figures["plots/predictions.png"].axes) == 3 * 3   # per image: cls+det on the input, seg, recon
    assert model.training


# ---- the exported model -----------------------------------------------------------------------------------

def test_exported_model_returns_each_heads_raw_outputs_under_the_onnx_names():
    model = tiny_model()
    model.train()
    image = torch.rand(2, 3, 64, 64)
    exported = exportable(model)
    outputs = exported(image)
    assert set(outputs) == {"cls_logits", "seg_logits", "det_8", "det_16", "det_32",
                            "recon_image", "recon_mu", "recon_logvar"}
    model.eval()
    with torch.no_grad():
        expected = NamedOutputsModel(model)(image)
    assert all(torch.equal(outputs[k], expected[k]) for k in expected)
    assert not exported.training and exported.model is not model   # a copy: training goes on untouched


def test_logged_model_loads_in_a_fresh_process_and_predicts_like_the_trained_one(sqlite_store, tmp_path):
    uri = sqlite_store
    tracker = Tracker(TrackingConfig(uri=uri, experiment="export"))
    run_id = tracker.start({}, {})
    # LeNet-5 keeps this test fast; the named multi-head outputs are checked above and in the server test.
    config = parse_config({"data": {"train": "unused", "val": "unused"},
                           "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}}})
    model, images = build_model(config.model, num_classes=3), torch.rand(3, 3, 32, 32)
    assert tracker.log_model(model, images[:2])
    tracker.end()
    model.eval()
    with torch.no_grad():
        torch.save({"images": images, "outputs": NamedOutputsModel(model)(images)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch, mlflow.pytorch\n"
        f"model = mlflow.pytorch.load_model('runs:/{run_id}/model')\n"
        "expected = torch.load(sys.argv[1], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    got = model(expected['images'])\n"
        "assert set(got) == set(expected['outputs']), (set(got), set(expected['outputs']))\n"
        "for key, value in expected['outputs'].items():\n"
        "    torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5)\n"
        "print('same predictions')\n"
    )
    # A fresh process outside the repository: the logged model must not need this code on sys.path.
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "expected.pt")], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same predictions" in done.stdout


def test_the_input_example_has_a_batch_of_at_least_two_so_the_logged_model_takes_any_batch():
    one = torch.rand(1, 3, 32, 32)
    example = input_example(one)
    assert example.shape == (2, 3, 32, 32) and example.dtype == "float32"
    assert (example[0] == one[0].numpy()).all() and (example[1] == one[0].numpy()).all()


class BranchesOnItsFeatures(torch.nn.Module):
    """A model torch.export cannot trace: its control flow depends on a value. One plain head, so the logged
    model's named outputs ("cls_logits") are what the heads' defaults give."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)
        self.heads = torch.nn.ModuleDict({"cls": Head()})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.conv(image).flatten(1)
        if features.mean() > 0:
            return {"cls": features}
        return {"cls": -features}


def model_not_logged_reason(run_log: Path) -> str:
    [event] = [e for e in map(json.loads, run_log.read_text().splitlines()) if e["event"] == "model_not_logged"]
    return event["reason"]


def test_a_model_that_cannot_be_exported_is_not_logged_and_the_whole_reason_is_kept(sqlite_store, tmp_path, caplog):
    tracker = Tracker(TrackingConfig(uri=sqlite_store, experiment="export-fails"))
    tracker.start({}, {})
    tracker.keep_local_copy(tmp_path / "metrics.jsonl")
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.tracker"):
        assert not tracker.log_model(BranchesOnItsFeatures(), torch.rand(2, 3, 32, 32))
    tracker.end()
    # torch.export names the line it could not trace far below the first line of its error: the fix is there.
    untraceable = "if features.mean() > 0"
    assert untraceable in model_not_logged_reason(tmp_path / "metrics.jsonl")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not log the model" in w and untraceable in w for w in warnings), warnings


# ---- the tracker on the local sqlite store ----------------------------------------------------------------

def test_metrics_reach_the_store_and_the_local_copy_including_non_finite_values(sqlite_store, tmp_path):
    uri = sqlite_store
    tracker = Tracker(TrackingConfig(uri=uri, experiment="local"))
    run_id = tracker.start({"train": {"epochs": 2}}, {"purpose": "test"})
    tracker.log_metrics({"train/loss": 1.5}, step=1)        # before keep_local_copy: buffered, not lost
    tracker.keep_local_copy(tmp_path / run_id / "metrics.jsonl")
    tracker.log_metrics({"train/loss": float("nan"), "train/grad_norm": float("inf")}, step=2)
    tracker.end()
    tracker.end()                                          # a second end is harmless

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "2"} and run.data.tags["purpose"] == "test"
    losses = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2] and losses[0].value == 1.5 and math.isnan(losses[1].value)
    assert client.get_metric_history(run_id, "train/grad_norm")[0].value > 1e300   # the store's +inf
    record = read_run_log(tmp_path / run_id / "metrics.jsonl")
    assert [(m.key, m.step) for m in record.metrics] == [("train/loss", 1), ("train/loss", 2),
                                                         ("train/grad_norm", 2)]
    assert record.status == "FINISHED" and record.params == {"train.epochs": "2"}
    with pytest.raises(RuntimeError, match="after end"):
        tracker.log_metrics({"train/loss": 1.0}, step=3)


def test_a_resumed_run_continues_in_the_same_mlflow_run(sqlite_store):
    uri = sqlite_store
    first = Tracker(TrackingConfig(uri=uri, experiment="resume"))
    run_id = first.start({"train": {"epochs": 1}}, {})
    first.log_metrics({"train/loss": 1.0}, step=1)
    first.end("KILLED")
    second = Tracker(TrackingConfig(uri=uri, experiment="resume"))
    assert second.start({"train": {"epochs": 1}}, {"resumed": "yes"}, resume_run_id=run_id) == run_id
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"
    second.log_metrics({"train/loss": 0.5}, step=2)
    second.end()
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"


# ---- the metric sender ------------------------------------------------------------------------------------

class FlakyStore:
    """Refuses the first `failures` batches as an unreachable server would, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures, self.received, self.calls = failures, [], 0
        self.lock = threading.Lock()

    def send(self, batch: list[Metric]) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise MlflowException("API request failed with exception ConnectionRefusedError")
            self.received += batch


def metrics(steps: range) -> list[Metric]:
    return [Metric("train/loss", float(step), 0, step) for step in steps]


def test_the_sender_retries_while_the_store_is_away_and_delivers_everything_in_order(caplog):
    store = FlakyStore(failures=3)
    sender = MetricSender(store.send, "test-store", Backoff(first=0.01, longest=0.02))
    with caplog.at_level(logging.INFO, logger="pipeline.tracking.sender"):
        sender.put(metrics(range(1500)))
        report = sender.close(timeout=10)
    assert [m.step for m in store.received] == list(range(1500))
    assert report.sent == 1500 and report.unsent == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot send metrics" in warnings[0].getMessage()
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1


def test_the_sender_gives_up_at_the_deadline_and_reports_what_is_unsent():
    store = FlakyStore(failures=10**9)
    sender = MetricSender(store.send, "test-store", Backoff(first=0.01, longest=0.05))
    sender.put(metrics(range(50)))
    report = sender.close(timeout=0.3)
    assert report.sent == 0 and report.unsent == 50


def test_a_batch_the_store_refuses_is_reported_not_retried():
    calls = []

    def send(batch):
        calls.append(batch)
        raise MlflowException.invalid_parameter_value("Invalid metric name")

    sender = MetricSender(send, "test-store", Backoff(first=0.01, longest=0.02))
    sender.put([Metric("bad key!", 1.0, 0, 0)])
    report = sender.close(timeout=5)
    assert (report.rejected, report.unsent, len(calls)) == (1, 0, 1)


def test_a_run_log_cut_short_by_a_crash_reads_back_and_takes_more_lines(tmp_path):
    from pipeline.tracking.run_log import RunLog

    path = tmp_path / "metrics.jsonl"
    first = RunLog()
    first.open(path)
    first.append({"event": "run", "run_id": "r1", "uri": "sqlite:///x.db", "experiment": "e", "params": {}, "tags": {}})
    first.append({"event": "metrics", "step": 1, "timestamp": 10, "values": {"train/loss": 1.0}})
    first.close()
    with path.open("a") as f:
        f.write('{"event":"metrics","step":2,"timest')          # the crash
    resumed = RunLog()
    resumed.open(path)
    resumed.append({"event": "metrics", "step": 3, "timestamp": 30, "values": {"train/loss": 0.5}})
    resumed.close()
    record = read_run_log(path)
    assert record.run_id == "r1" and [m.step for m in record.metrics] == [1, 3]


# ---- the store's URI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    "http://mlflow-host:5000", "https://mlflow.example.com/prefix", "HTTP://127.0.0.1:5000",
    "sqlite:///runs/mlflow.db", "sqlite:////srv/mlflow/mlflow.db", "postgresql+psycopg2://user@db-host/mlflow",
    "databricks", "databricks://profile",
])
def test_every_uri_form_mlflow_opens_passes_the_check(uri):
    assert resolve_uri(TrackingConfig(uri=uri)) == uri


@pytest.mark.parametrize("uri", ["mlruns", "./runs/mlruns", "/srv/mlruns", "file:/srv/mlruns", "file:///srv/mlruns"])
def test_a_folder_store_passes_the_check_when_mlflow_is_told_to_open_one(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_uri(TrackingConfig(uri=uri)) == uri


def test_a_well_formed_store_that_refuses_connections_gives_a_local_run(tmp_path, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(TrackingConfig(uri=dead, experiment="offline"), http=HttpLimits(max_retries=0))
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.tracker"):
        run_id = tracker.start({}, {})
    tracker.keep_local_copy(tmp_path / "metrics.jsonl")
    assert not tracker.log_model(BranchesOnItsFeatures(), torch.rand(2, 3, 32, 32))
    tracker.end()
    assert run_id.startswith("local-") and not tracker.online
    assert any(dead in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
    assert "unreachable" in model_not_logged_reason(tmp_path / "metrics.jsonl")
