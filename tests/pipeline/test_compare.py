"""`python -m pipeline compare`: single-task baselines and the shared model as child runs of one parent."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.compare import Comparison, RunSummary, run_compare
from pipeline.config import parse_config


def summary(metrics: dict[str, float], seconds: float, params: int) -> RunSummary:
    return RunSummary(tasks=[], metrics=metrics, train_seconds=seconds, inference_seconds=seconds / 100,
                      parameters=params, run_id="x")


def test_delta_m_is_the_mean_sign_corrected_relative_change():
    comparison = Comparison(
        multi=summary({"cls/accuracy": 0.88, "recon/mse": 0.012}, 60.0, 150),
        singles={"cls": summary({"cls/accuracy": 0.80}, 50.0, 100), "recon": summary({"recon/mse": 0.010}, 70.0, 100)},
        main_metrics={"cls": ("accuracy", True), "recon": ("mse", False)},
    )
    # cls: +10%; recon: mse up 20% is 20% worse -> (10 - 20) / 2 = -5%
    assert comparison.delta_m == pytest.approx(-5.0)
    assert comparison.train_time_ratio == pytest.approx(0.5)
    assert comparison.parameter_ratio == pytest.approx(0.75)
    assert comparison.inference_time_ratio == pytest.approx(0.5)


def test_compare_trains_every_task_alone_and_together_as_children_of_one_parent_run(tmp_path):
    data = tmp_path / "data"
    config = parse_config({
        "name": "cmp", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": 8, "num_workers": 0, "shapes": {"train_images": 16, "val_images": 8}},
        "model": {"backbone": {"name": "lenet5"},
                  "heads": {"cls": {"type": "classification"},
                            "recon": {"type": "ae", "bottleneck_stride": 4, "decoder_channels": [8, 8]}},
                  "weighting": {"name": "uncertainty"}},
        "train": {"epochs": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cmp"},
    })
    comparison, report_path = run_compare(config)
    assert set(comparison.singles) == {"cls", "recon"} and comparison.multi.tasks == ["cls", "recon"]
    client = MlflowClient(tracking_uri=config.tracking.uri)
    children = {s.run_id: s for s in [*comparison.singles.values(), comparison.multi]}
    parents = {client.get_run(run_id).data.tags["mlflow.parentRunId"] for run_id in children}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.metrics["compare/delta_m_percent"] == pytest.approx(comparison.delta_m)
    assert client.get_run(comparison.singles["cls"].run_id).data.params["model.weighting.name"] == "static"
    assert client.get_run(comparison.multi.run_id).data.params["model.weighting.name"] == "uncertainty"
    # The figures come from the children's own validation metrics.
    alone = client.get_run(comparison.singles["recon"].run_id).data.metrics["val/recon/psnr"]
    shared = client.get_run(comparison.multi.run_id).data.metrics["val/recon/psnr"]
    cls_alone = client.get_run(comparison.singles["cls"].run_id).data.metrics["val/cls/accuracy"]
    cls_shared = client.get_run(comparison.multi.run_id).data.metrics["val/cls/accuracy"]
    expected = 50 * ((shared - alone) / alone + (cls_shared - cls_alone) / cls_alone)
    assert comparison.delta_m == pytest.approx(expected, rel=1e-5)
    assert comparison.multi.parameters < sum(s.parameters for s in comparison.singles.values())
    assert "Delta_m" in report_path.read_text()
