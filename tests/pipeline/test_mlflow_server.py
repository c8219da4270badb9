"""Tracking against a real `mlflow server` over HTTP: a tiny training run read back through MlflowClient, and
the server going away (mid-run, for good, or before the start) without losing a metric."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlflow_server import MlflowServer, free_port
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.jobs.cli import main
from pipeline.config.schema import TrackingConfig, parse_config
from pipeline.inference.named_outputs import NamedOutputsModel
from pipeline.tracking.http_limits import HttpLimits
from pipeline.model import build_model
from pipeline.tracking.run_log import read_run_log
from pipeline.tracking.tracker import Tracker
from pipeline.jobs.train import run_training

KEYS = ["train/loss", "train/cls/loss", "lr"]   # what a trainer logs every step
STEPS_BEFORE, STEPS_AWAY, STEPS_AFTER = 40, 60, 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


class Messages(logging.Handler):
    """Log records of the tracking modules, for a module-scoped fixture (caplog is per test)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def log_steps(tracker: Tracker, steps: range) -> float:
    """Log like a trainer; returns the slowest log_metrics call in seconds."""
    slowest = 0.0
    for step in steps:
        started = time.perf_counter()
        tracker.log_metrics({"train/loss": 1.0 / step, "train/cls/loss": 0.5 / step, "lr": 0.01}, step=step)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def steps_on_server(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# ---- a real training run over HTTP ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    data = tmp_path / "data"
    raw = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 64, "batch_size": 4, "num_workers": 0, "shapes": {"train_images": 8, "val_images": 4}},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"},
                            "det": {"type": "yolo"}, "recon": {"type": "ae"}}},
        "train": {"epochs": 2},
        "tracking": {"uri": server.uri, "experiment": "over-http"},
    }
    result, run_id = run_training(parse_config(raw))
    return raw, result, run_id


def test_a_training_run_is_read_back_whole_through_the_server(server, trained):
    raw, result, run_id = trained
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.heads.det.type"] == "yolo"
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] and tags["git.dirty"] in {"true", "false", "unknown"}
    assert tags["data.train.name"] == "synthetic shapes"
    assert tags["data.train.sha256"] == hashlib.sha256(Path(raw["data"]["train"]).read_bytes()).hexdigest()
    steps = 2 * 2   # 8 images in batches of 4, 2 epochs
    for key in ["train/loss", "train/cls/loss", "train/seg/loss", "train/det/loss", "train/recon/loss", "lr"]:
        assert steps_on_server(server.uri, run_id, key) == list(range(1, steps + 1)), key
    for key in ["val/cls/accuracy", "val/seg/mIoU", "val/det/mAP", "val/recon/psnr"]:
        assert len(client.get_metric_history(run_id, key)) == 2, key   # one per epoch
    artifacts = {a.path for folder in (None, "checkpoints", "plots", "plots/confusion")
                 for a in client.list_artifacts(run_id, folder)}
    assert {"config.yaml", "checkpoints/last.pt", "plots/losses.png", "plots/confusion/cls.png",
            "plots/predictions.png"} <= artifacts
    assert len(read_run_log(result.checkpoint.parent / "metrics.jsonl").metrics) >= 6 * steps


def test_the_logged_model_predicts_what_the_checkpoint_predicts(server, trained, monkeypatch):
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)   # where runs:/ URIs resolve
    _, result, run_id = trained
    state = load_checkpoint(result.checkpoint)
    config = parse_config(state["config"])
    model = build_model(config.model, num_classes=len(state["class_names"]))
    model.load_state_dict(state["model"])
    model.eval()
    images = torch.rand(3, 3, 64, 64)
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model", dst_path=str(result.checkpoint.parent / "loaded"))
    with torch.no_grad():
        expected, got = NamedOutputsModel(model)(images), logged(images)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)


# ---- the server goes away ---------------------------------------------------------------------------------

@dataclass
class Outage:
    back_run: str           # its server came back before end()
    gone_run: str           # its end() came while the server was still away
    gone_dir: Path
    messages: Messages


@pytest.fixture(scope="module")
def outage(server, tmp_path_factory):
    """Two runs on one server; it stops mid-run; one run ends while it is away, then it comes back and
    the other run goes on and ends. (One outage for both: restarting a server costs seconds.)"""
    tmp_path = tmp_path_factory.mktemp("outage")
    messages, pipeline_log = Messages(), logging.getLogger("pipeline")
    level = pipeline_log.level
    pipeline_log.addHandler(messages)
    pipeline_log.setLevel(logging.INFO)
    try:
        config = TrackingConfig(uri=server.uri, experiment="outage")
        back, gone = Tracker(config, flush_timeout=30.0), Tracker(config, flush_timeout=1.0)
        back_run, gone_run = back.start({"a": 1}, {}), gone.start({"a": 1}, {})
        back.keep_local_copy(tmp_path / back_run / "metrics.jsonl")
        gone.keep_local_copy(tmp_path / gone_run / "metrics.jsonl")
        before = range(1, STEPS_BEFORE + 1)
        for tracker in (back, gone):
            log_steps(tracker, before)
        for run_id in (back_run, gone_run):  # every value logged so far has reached the server
            wait_until(lambda: len(steps_on_server(server.uri, run_id)) == STEPS_BEFORE)
        server.stop()
        away = range(STEPS_BEFORE + 1, STEPS_BEFORE + STEPS_AWAY + 1)
        log_steps(back, away)
        log_steps(gone, away)
        gone.end()
        server.start()
        log_steps(back, range(STEPS_BEFORE + STEPS_AWAY + 1, STEPS_BEFORE + STEPS_AWAY + STEPS_AFTER + 1))
        back.end()
    finally:
        pipeline_log.removeHandler(messages)
        pipeline_log.setLevel(level)
        if not server.healthy():
            server.start()  # the other tests need it
    return Outage(back_run, gone_run, tmp_path / gone_run, messages)


def test_metrics_logged_while_the_server_is_away_arrive_when_it_comes_back(server, outage):
    every_step = list(range(1, STEPS_BEFORE + STEPS_AWAY + STEPS_AFTER + 1))
    for key in KEYS:
        assert steps_on_server(server.uri, outage.back_run, key) == every_step, key
    assert MlflowClient(tracking_uri=server.uri).get_run(outage.back_run).info.status == "FINISHED"
    failing = [m for m in outage.messages.text(logging.WARNING) if m.startswith("cannot send metrics")]
    # At most once per run, not once per attempt (a run whose values were gathered while the server was away
    # and sent after it came back never saw it fail).
    assert 1 <= len(failing) <= 2
    assert any("reachable again" in m for m in outage.messages.text(logging.INFO))


def test_metrics_of_a_run_that_ended_while_the_server_was_away_are_replayed_once(server, outage, capsys):
    sent_steps = range(1, STEPS_BEFORE + STEPS_AWAY + 1)
    warning = next(m for m in outage.messages.text(logging.WARNING) if outage.gone_run in m and "replay" in m)
    assert f"python -m pipeline replay {outage.gone_dir}" in warning
    assert len(steps_on_server(server.uri, outage.gone_run)) < len(sent_steps)
    assert [m.step for m in read_run_log(outage.gone_dir / "metrics.jsonl").metrics if m.key == "lr"] == list(sent_steps)

    assert main(["replay", str(outage.gone_dir)]) == 0
    first = capsys.readouterr().out
    assert main(["replay", str(outage.gone_dir)]) == 0
    second = capsys.readouterr().out

    for key in KEYS:
        assert steps_on_server(server.uri, outage.gone_run, key) == list(sent_steps), key   # each once
    assert MlflowClient(tracking_uri=server.uri).get_run(outage.gone_run).info.status == "FINISHED"
    before, away = len(KEYS) * STEPS_BEFORE, len(KEYS) * STEPS_AWAY
    assert f": {away} metric values sent, {before} already there" in first
    assert f": 0 metric values sent, {before + away} already there" in second


def test_a_server_unreachable_at_start_gives_a_local_run_that_replay_creates(server, tmp_path, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(TrackingConfig(uri=dead, experiment="offline"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        run_id = tracker.start({"train": {"epochs": 3}}, {"command": "test"})
        run_dir = tmp_path / run_id
        tracker.keep_local_copy(run_dir / "metrics.jsonl")
        log_steps(tracker, range(1, 21))
        (run_dir / "config.yaml").write_text("train: {epochs: 3}\n")
        assert not tracker.log_artifact(run_dir / "config.yaml")
        tracker.end()
    assert time.monotonic() - started < 20       # bounded retries: seconds, not MLflow's minutes
    assert run_id.startswith("local-")
    assert any(dead in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)

    assert main(["replay", str(run_dir), "--uri", server.uri]) == 0
    assert main(["replay", str(run_dir), "--uri", server.uri]) == 0

    client = MlflowClient(tracking_uri=server.uri)
    runs = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    assert len(runs) == 1                          # the second replay found the run the first one created
    run = runs[0]
    assert run.data.params == {"train.epochs": "3"} and run.data.tags["command"] == "test"
    assert run.data.tags["replayed_from"] == run_id and run.info.status == "FINISHED"
    for key in KEYS:
        assert steps_on_server(server.uri, run.info.run_id, key) == list(range(1, 21)), key
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def test_a_hung_server_never_blocks_logging_and_end_waits_a_bounded_time(server, tmp_path):
    tracker = Tracker(TrackingConfig(uri=server.uri, experiment="hung"), flush_timeout=1.0, http=HttpLimits(timeout=1))
    run_id = tracker.start({}, {})
    tracker.keep_local_copy(tmp_path / run_id / "metrics.jsonl")
    server.pause()
    try:
        slowest = log_steps(tracker, range(1, 101))
        started = time.monotonic()
        tracker.end()
        ending = time.monotonic() - started
    finally:
        server.resume()
    assert slowest < 0.5        # a call that waited on the server would take its 1 s timeout
    assert ending < 10          # 1 s of flushing, then one bounded attempt to mark the run terminated
    assert len(read_run_log(tmp_path / run_id / "metrics.jsonl").metrics) == 100 * len(KEYS)
