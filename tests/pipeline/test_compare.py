"""`python -m pipeline compare`: single-task baselines and the shared model as child runs of one parent."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.jobs.compare import Comparison, RunSummary, inference_seconds, open_parent_run, run_compare
from pipeline.config.schema import parse_config
from pipeline.runtime.device import select_device, select_precision
from pipeline.runtime.distributed import DistInfo
from pipeline.model import build_model


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


def small_config(tmp_path, **train):
    return parse_config({
        "name": "cmp", "output_dir": str(tmp_path / "runs"),
        "data": {"train": "unused", "val": "unused", "image_size": 32},
        "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
        "train": {"epochs": 1, **train},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cmp"},
    })


@pytest.mark.parametrize("device, amp, dtype", [
    ("cpu", "fp32", torch.float32),
    ("cpu", "bf16", torch.bfloat16),
    pytest.param("cuda", "auto", None, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_inference_is_timed_on_the_training_device_and_precision(tmp_path, device, amp, dtype):
    """As validation runs: the models and images moved to the config's device, under its autocast."""
    config = small_config(tmp_path, device=device, amp=amp)
    target = select_device(config.train.device)
    seen = []
    model = build_model(config.model, num_classes=3)
    model.register_forward_hook(lambda module, inputs, outputs: seen.append(
        (inputs[0].device, next(module.parameters()).device, outputs["cls"].dtype)))
    seconds = inference_seconds({"cls": model}, torch.rand(4, 3, 32, 32), target,
                                select_precision(config.train.amp, target), repeats=2)
    assert seconds["cls"] > 0
    expected_dtype = dtype or select_precision(amp, target).dtype
    assert seen and all(image.type == target.type and weights.type == target.type and out == expected_dtype
                        for image, weights, out in seen), seen


def test_only_rank_0_opens_the_parent_run(tmp_path):
    """Under torchrun every rank runs compare; one comparison is one parent run."""
    config = small_config(tmp_path)
    assert open_parent_run(config, DistInfo(rank=1, local_rank=1, world_size=2)) == (None, None)
    assert not (tmp_path / "mlflow.db").exists()
    tracker, parent = open_parent_run(config, DistInfo(rank=0, local_rank=0, world_size=2))
    tracker.end()
    client = MlflowClient(tracking_uri=config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert [run.info.run_id for run in runs] == [parent]
    assert runs[0].data.tags["mlflow.source.name"] == "python -m pipeline compare"
