"""`lr-find`: the range test's suggestion and stopping rule on known curves, and a real sweep on a tiny config:
its own MLflow run with the curve and the plot, a suggestion inside the sweep, nothing else written."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.jobs.cli import main
from pipeline.tuning.lr_range import Curve, lr_at, suggest
from support import write_tiny_config


def test_the_sweep_is_geometric_from_start_to_end():
    lrs = [lr_at(step, 5, 1e-6, 1e-2) for step in range(5)]
    assert lrs == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])


def test_the_suggestion_is_where_the_loss_falls_fastest_and_the_min_loss_lr_over_ten():
    lrs = np.logspace(-6, 0, 61)
    losses = 2 - np.tanh(2 * (np.log10(lrs) + 3)) + 0.5 * np.clip(np.log10(lrs) + 1, 0, None)  # steepest at 1e-3
    curve = Curve(smoothing=0.0)
    for lr, loss in zip(lrs, losses):
        assert curve.add(float(lr), float(loss))
    suggestion = suggest(curve)
    assert suggestion.steepest == pytest.approx(1e-3)
    assert suggestion.min_loss_tenth == pytest.approx(lrs[np.argmin(losses)] / 10)


def test_the_sweep_stops_once_the_smoothed_loss_passes_four_times_its_lowest():
    curve = Curve(smoothing=0.0, diverge=4.0)
    assert curve.add(1e-5, 1.0) and curve.add(1e-4, 0.5) and curve.add(1e-3, 1.9)
    assert not curve.add(1e-2, 2.1) and curve.stopped_early
    assert not Curve().add(1e-5, math.inf)


def test_lr_find_logs_its_curve_and_plot_to_a_run_of_its_own(tmp_path, capsys):
    path = write_tiny_config(tmp_path, "tiny", "lr", {"device": "cpu"})
    start, end = 1e-5, 10.0
    assert main(["lr-find", str(path), "--start", str(start), "--end", str(end), "--steps", "24"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr (steepest descent of the smoothed loss)" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lr").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "python -m pipeline lr-find"
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr_find/lr"), key=lambda m: m.step)]
    losses = client.get_metric_history(run.info.run_id, "lr_find/loss")
    assert 2 <= len(lrs) == len(losses) <= 24 and lrs[0] == pytest.approx(start)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))                      # growing exponentially
    assert lrs[1] / lrs[0] == pytest.approx((end / start) ** (1 / 23))
    suggested = run.data.metrics["lr_find/suggested_lr"]
    assert start <= suggested <= end and start <= run.data.metrics["lr_find/min_loss_lr_div10"] <= end
    assert f"{suggested:.3g}" in out
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lr_find.png", "lr_find.csv"} <= artifacts
    (folder,) = (tmp_path / "runs/tiny").iterdir()                      # its own folder, nothing else: no weights
    assert folder.name == f"lr-find-{run.info.run_id}"
    assert (folder / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.pt"))
