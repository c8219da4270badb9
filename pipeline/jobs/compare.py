"""The multi-task gain: `python -m pipeline compare CONFIG` trains each task alone and all tasks together
(same backbone, data, epochs and optimiser) and reports what sharing the backbone gained and saved.

Delta_m (Maninis et al. 2019; Vandenhende et al. 2021) is the mean over tasks of the relative change of
each task's main metric, sign-corrected so that positive is better:
    Delta_m = 100 / T * sum_t (-1)^{l_t} (M_multi,t - M_single,t) / M_single,t,   l_t = 1 if lower is better.
The comparison is one MLflow parent run; every training run is its child. Under torchrun every rank trains
its part of each run, rank 0 alone opens the parent run, logs to it and writes the report.
Inference is timed as validation runs: on the training device (cuda:<local rank> under torchrun), with its
mixed precision.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from backbones.weights import WeightsFileError
from pipeline.config.schema import Config, config_to_dict, load_config
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.jobs.command import Command
from pipeline.jobs.evaluate import model_from_checkpoint
from pipeline.jobs.train import run_training
from pipeline.model import MultiTaskModel
from pipeline.runtime.device import Precision, select_precision
from pipeline.runtime.distributed import DistInfo, broadcast_from_main, init_distributed, shutdown
from pipeline.tracking.tracker import Tracker, resolve_uri

# The metric each head kind is judged by, and whether higher is better; the first one a head reports counts.
MAIN_METRICS: dict[str, list[tuple[str, bool]]] = {
    "classification": [("accuracy", True), ("mAP", True)],
    "segmentation": [("mIoU", True)],
    "detection": [("mAP", True)],
    "reconstruction": [("psnr", True)],
}


@dataclass
class RunSummary:
    tasks: list[str]
    metrics: dict[str, float]      # "task/metric" -> value
    train_seconds: float
    inference_seconds: float       # one forward + decode of a batch of validation images (median)
    parameters: int
    run_id: str


@dataclass
class Comparison:
    multi: RunSummary
    singles: dict[str, RunSummary]
    main_metrics: dict[str, tuple[str, bool]]   # task -> (metric, higher is better)

    def relative_change(self, task: str) -> float:
        metric, higher = self.main_metrics[task]
        single, multi = self.singles[task].metrics[f"{task}/{metric}"], self.multi.metrics[f"{task}/{metric}"]
        return (1.0 if higher else -1.0) * (multi - single) / abs(single)

    @property
    def delta_m(self) -> float:
        """In percent."""
        return self.delta_m_over(list(self.singles))

    def delta_m_over(self, tasks: list[str]) -> float:
        return 100.0 * statistics.fmean(self.relative_change(task) for task in tasks)

    def degenerate_baselines(self) -> list[str]:
        """Tasks whose single-task metric is so low that the relative change passes 100%: one of them then
        dominates Delta_m, so the report also gives Delta_m without them."""
        return [task for task in self.singles if abs(self.relative_change(task)) > 1.0]

    @property
    def train_time_ratio(self) -> float:
        return self.multi.train_seconds / sum(s.train_seconds for s in self.singles.values())

    @property
    def inference_time_ratio(self) -> float:
        return self.multi.inference_seconds / sum(s.inference_seconds for s in self.singles.values())

    @property
    def parameter_ratio(self) -> float:
        return self.multi.parameters / sum(s.parameters for s in self.singles.values())


def single_task_config(config: Config, task: str) -> Config:
    """The same experiment with only `task`'s head, weight 1 (a task alone needs no weighting)."""
    single = copy.deepcopy(config)
    head = dataclasses.replace(single.model.heads[task], weight=1.0)
    single.model = dataclasses.replace(single.model, heads={task: head},
                                       weighting=dataclasses.replace(single.model.weighting, name="static",
                                                                     options=None))
    single.name = f"{config.name}-{task}"
    single.tracking = dataclasses.replace(single.tracking, run_name=f"{task} alone")
    return single


def main_metric(task: str, kind: str, metrics: dict[str, float]) -> tuple[str, bool]:
    for metric, higher in MAIN_METRICS[kind]:
        if f"{task}/{metric}" in metrics:
            return metric, higher
    raise ValueError(f"compare: task {task!r} ({kind}) reported none of {[m for m, _ in MAIN_METRICS[kind]]}")


def train_and_measure(config: Config, parent_run_id: str) -> tuple[RunSummary, MultiTaskModel]:
    result, run_id = run_training(config, tags={"mlflow.parentRunId": parent_run_id})
    model, _ = model_from_checkpoint(result.checkpoint)
    summary = RunSummary(list(config.model.heads), result.evaluation.metrics, result.seconds, 0.0,
                         sum(p.numel() for p in model.parameters()), run_id)
    return summary, model


@torch.no_grad()
def inference_seconds(models: dict[str, MultiTaskModel], images: torch.Tensor, device: torch.device,
                      precision: Precision | None = None, repeats: int = 7) -> dict[str, float]:
    """Median time of forward + decode on `images` per model on `device` (the models and images are moved
    there) under `precision`'s autocast, the models interleaved in every round so a noisy machine slows them
    alike."""
    precision = precision or Precision(None, device.type)
    images = images.to(device)
    for model in models.values():
        model.to(device).eval()
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats + 1):  # the first round warms up
        for name, model in models.items():
            synchronize(device)
            start = time.perf_counter()
            with precision.autocast():
                outputs = model(images)
                for task, head in model.heads.items():
                    head.decode(outputs[task])
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def synchronize(device: torch.device) -> None:
    """CUDA returns before its kernels finish: the clock must wait for them, and for the work queued before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_compare(config: Config) -> tuple[Comparison, Path]:
    """Train every task alone, then all together, as children of one MLflow parent run; the report is
    written to <output_dir>/<name>/compare-<parent run id>.md and logged with the parent run (by rank 0)."""
    resolve_uri(config.tracking)  # a store URI that can never work stops every rank, not only rank 0
    dist, device = init_distributed(config.train.device)
    try:
        return _run_compare(config, dist, device)
    finally:
        shutdown()  # each training leaves the process group; this is for a comparison stopped before one


def _run_compare(config: Config, dist: DistInfo, device: torch.device) -> tuple[Comparison, Path]:
    tracker, parent = open_parent_run(config, dist)
    # Every rank's training names the same parent run (rank 0's tracker tags the child with it), and every
    # rank returns the same report path.
    parent = broadcast_from_main(parent, dist)
    path = Path(config.output_dir) / config.name / f"compare-{parent}.md"
    try:
        comparison = _compare(config, parent, device)
        if tracker:
            record(tracker, comparison, path)
    except BaseException:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.end("FINISHED")
    return comparison, path


def open_parent_run(config: Config, dist: DistInfo) -> tuple[Tracker | None, str | None]:
    """The comparison's parent run and its tracker, on rank 0; (None, None) on the other ranks (their child
    runs are rank 0's)."""
    if not dist.is_main:
        return None, None
    tracker = Tracker(dataclasses.replace(config.tracking, run_name=f"{config.name}: multi-task vs single-task"))
    parent = tracker.start(config_to_dict(config), tags={"mlflow.source.name": "python -m pipeline compare"})
    return tracker, parent


def record(tracker: Tracker, comparison: Comparison, path: Path) -> None:
    """The comparison's figures on the parent run, and its report at `path` and as the run's artifact."""
    tracker.log_metrics({"compare/delta_m_percent": comparison.delta_m,
                         "compare/train_time_ratio": comparison.train_time_ratio,
                         "compare/inference_time_ratio": comparison.inference_time_ratio,
                         "compare/parameter_ratio": comparison.parameter_ratio}, step=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report(comparison) + "\n")
    tracker.log_artifact(path)


def _compare(config: Config, parent: str, device: torch.device) -> Comparison:
    singles, models = {}, {}
    for task in config.model.heads:
        singles[task], models[task] = train_and_measure(single_task_config(config, task), parent)
    multi, models["multi"] = train_and_measure(config, parent)
    images = validation_images(config)
    seconds = inference_seconds(models, images, device, select_precision(config.train.amp, device))
    for task, summary in singles.items():
        summary.inference_seconds = seconds[task]
    multi.inference_seconds = seconds["multi"]
    kinds = {task: head.kind for task, head in models["multi"].heads.items()}
    main = {task: main_metric(task, kinds[task], multi.metrics) for task in singles}
    return Comparison(multi, singles, main)


def validation_images(config: Config) -> torch.Tensor:
    """One batch of validation images at the training size: what inference is timed on."""
    from pipeline.engine.data import build_splits, eval_loader

    splits = build_splits(config.data)
    return next(iter(eval_loader(splits.val, config.data, config.seed))).image


def report(comparison: Comparison) -> str:
    """A Markdown table: each task's main metric alone and shared, then the totals."""
    lines = ["| task | metric | alone | shared | change |", "|---|---|---|---|---|"]
    for task, (metric, higher) in comparison.main_metrics.items():
        alone = comparison.singles[task].metrics[f"{task}/{metric}"]
        shared = comparison.multi.metrics[f"{task}/{metric}"]
        lines.append(f"| {task} | {metric} ({'higher' if higher else 'lower'} is better) | {alone:.4f} | "
                     f"{shared:.4f} | {100 * comparison.relative_change(task):+.1f}% |")
    singles = comparison.singles.values()
    lines += [
        "",
        f"Delta_m = **{comparison.delta_m:+.2f}%** (mean sign-corrected relative change; positive: sharing helps)",
        *degenerate_note(comparison),
        "",
        "| | separate models (sum) | one shared model | ratio |", "|---|---|---|---|",
        f"| parameters | {sum(s.parameters for s in singles):,} | {comparison.multi.parameters:,} | "
        f"{comparison.parameter_ratio:.2f} |",
        f"| training time | {sum(s.train_seconds for s in singles):.0f} s | {comparison.multi.train_seconds:.0f} s | "
        f"{comparison.train_time_ratio:.2f} |",
        f"| inference time (one batch) | {1000 * sum(s.inference_seconds for s in singles):.1f} ms | "
        f"{1000 * comparison.multi.inference_seconds:.1f} ms | {comparison.inference_time_ratio:.2f} |",
    ]
    return "\n".join(lines)


def degenerate_note(comparison: Comparison) -> list[str]:
    degenerate = comparison.degenerate_baselines()
    rest = [task for task in comparison.singles if task not in degenerate]
    if not degenerate or not rest:
        return []
    return ["", f"{', '.join(degenerate)}: the task alone barely learned (relative change beyond 100%), which "
                f"dominates Delta_m; over the other tasks ({', '.join(rest)}) Delta_m = "
                f"**{comparison.delta_m_over(rest):+.2f}%**"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML of the multi-task model")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, applied to every run")


def run(args: argparse.Namespace) -> str:
    comparison, path = run_compare(load_config(args.config, args.overrides))
    return f"{report(comparison)}\n\nwritten to {path}"


COMMAND = Command("compare", "train each task alone and all together; report Delta_m, parameters and time",
                  add_arguments, run, user_errors=(ConfigError, FileNotFoundError, DataCheckError, WeightsFileError),
                  takes_overrides=True)
