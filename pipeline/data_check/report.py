"""`python -m pipeline check-data CONFIG`: look at the data before training.

`run_check_data` reads every split of a config in full (datasets/inspection.py), runs the guard's checks
(pipeline/data_check/guard.py), relates the boxes to each detection head (strides, anchors, box sizes in
network-input pixels), draws augmented training samples with their targets to `samples.png`
(pipeline/data_check/drawing.py), and writes everything to `check_data.json`; `render_text`
(pipeline/data_check/text.py) is what the CLI prints.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from datasets.inspection import SourceReport, SplitReport, inspect_split
from datasets.summary import input_box_sizes, summarize
from heads.anchors import shape_iou
from pipeline.config.schema import Config, HeadConfig
from pipeline.engine.data import DataSplits, build_splits
from pipeline.data_check.drawing import sample_grid
from pipeline.data_check.guard import detection_heads, head_strides, listed, trainability_problems

if TYPE_CHECKING:
    from pipeline.tracking.tracker import Tracker


POOR_ANCHOR_IOU = 0.25          # a box whose best anchor (shape IoU) is below this is poorly covered
POOR_ANCHOR_WARNING = 0.2       # warn when more than this fraction of boxes is poorly covered
MAX_PROBLEMS_SHOWN = 30


# ---- the report -------------------------------------------------------------------------------------


@dataclass
class HeadReport:
    """A detection head against the training boxes, all in network-input pixels."""
    task: str
    type: str
    strides: list[int]                              # sorted
    anchors: list[list[list[float]]] | None = None  # per level [w, h]; None for anchor-free heads
    anchors_fitted: bool = False                    # anchors: auto, fitted to the training boxes here
    boxes: int = 0
    median_longer_side: float | None = None
    histogram: list[list] = field(default_factory=list)   # [bin label, boxes] by max(w, h)
    below_finest_stride: float | None = None        # fraction of boxes whose longer side < finest stride
    poorly_covered: float | None = None             # fraction with best anchor shape IoU < POOR_ANCHOR_IOU
    note: str | None = None                         # why something could not be computed


@dataclass
class CheckReport:
    config: str
    image_size: int
    resize: str
    image_policy: dict
    splits: dict[str, SplitReport]
    heads: list[HeadReport]
    errors: list[str]
    warnings: list[str]
    samples_png: str | None = None
    samples: list[dict] = field(default_factory=list)   # what the grid shows: dataset index, image id
    out_dir: str = ""

    def to_dict(self) -> dict:
        return {"config": self.config, "image_size": self.image_size, "resize": self.resize,
                "image_policy": self.image_policy, "errors": self.errors, "warnings": self.warnings,
                "splits": {name: split.to_dict() for name, split in self.splits.items()},
                "heads": [asdict(head) for head in self.heads],
                "samples_png": self.samples_png, "samples": self.samples}


# ---- check-data -------------------------------------------------------------------------------------


def default_out_dir(config: Config) -> Path:
    """runs/<name>/check-data: beside the experiment's runs, never inside one (run folders are MLflow ids)."""
    return Path(config.output_dir) / config.name / "check-data"


def run_check_data(config: Config, out_dir: str | Path | None = None, samples: int = 16,
                   tracker: "Tracker | None" = None, source: str = "") -> CheckReport:
    """Every fact about every split, the detection heads against the boxes, a grid of `samples` augmented
    training samples; written to `out_dir` (default `default_out_dir`) and, given a started `tracker`, logged
    as artifacts under check-data/."""
    splits = build_splits(config.data)
    reports = {"train": inspect_split(splits.train, None, "train"), "val": inspect_split(splits.val, None, "val")}
    heads = [head_report(config, task, head, splits, reports["train"]) for task, head in detection_heads(config)]
    report = CheckReport(
        config=source or config.name, image_size=config.data.image_size, resize=config.data.resize,
        image_policy=splits.image_policy.to_dict(), splits=reports, heads=heads,
        errors=trainability_problems(reports, config), warnings=data_warnings(reports, heads),
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out)
    if samples > 0:
        grid, report.samples = sample_grid(splits.train, splits.class_names, samples, config.seed)
        if grid is not None:
            report.samples_png = str(out / "samples.png")
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(report.samples_png)
    (out / "check_data.json").write_text(json.dumps(report.to_dict(), indent=2))
    if tracker is not None:
        for path in (report.samples_png, out / "check_data.json"):
            if path:
                tracker.log_artifact(path, "check-data")
    return report


def head_report(config: Config, task: str, head: HeadConfig, splits: DataSplits, train: SplitReport) -> HeadReport:
    strides = head_strides(head)
    report = HeadReport(task=task, type=head.type, strides=strides)
    sizes = input_box_sizes(train.box_sizes, config.data.image_size, config.data.resize)
    report.boxes = len(sizes)
    if len(sizes):
        longer = sizes.max(axis=1)
        report.median_longer_side = float(np.median(longer))
        report.histogram = size_histogram(longer, strides, config.data.image_size)
        report.below_finest_stride = float((longer < strides[0]).mean())
    if hasattr(head.options, "anchors"):
        _add_anchors(report, config, task, head, splits, sizes)
    return report


def _add_anchors(report: HeadReport, config: Config, task: str, head: HeadConfig, splits: DataSplits,
                 sizes: np.ndarray) -> None:
    """The head's anchors as training would have them: built (no pretrained weights) and, for `auto`,
    fitted to the training boxes exactly as pipeline/jobs/train.py does."""
    from pipeline.model import build_model

    model_config = dataclasses.replace(
        config.model, heads={task: head},
        backbone=dataclasses.replace(config.model.backbone, pretrained=False))
    try:
        built = build_model(model_config, num_classes=len(splits.class_names), in_channels=config.data.channels).heads[task]
        built.fit_data(summarize(splits.train, config.data.image_size, config.data.resize))
    except ValueError as error:
        report.note = f"anchors not available: {error}"
        return
    report.anchors = [[[round(float(v), 2) for v in wh] for wh in level.tolist()] for level in built.anchors]
    report.anchors_fitted = head.options.anchors == "auto"
    if len(sizes):
        best = shape_iou(torch.as_tensor(sizes, dtype=torch.float32), built.anchor_sizes.float()).amax(dim=1)
        report.poorly_covered = float((best < POOR_ANCHOR_IOU).float().mean())


def size_histogram(longer: np.ndarray, strides: list[int], image_size: int) -> list[list]:
    """Boxes by longer side against the strides: < finest/2, then doubling bins from the finest stride."""
    finest = strides[0]
    edges = [0.0, finest / 2, float(finest)]
    while edges[-1] < max(strides[-1] * 2, image_size):
        edges.append(edges[-1] * 2)
    edges.append(math.inf)
    counts, _ = np.histogram(longer, bins=edges)
    labels = [f"<{edges[1]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[1:-2], edges[2:-1])] + [f">={edges[-2]:g}"]
    return [[label, int(count)] for label, count in zip(labels, counts)]


# ---- warnings ---------------------------------------------------------------------------------------


def data_warnings(reports: dict[str, SplitReport], heads: list[HeadReport]) -> list[str]:
    warnings = []
    for split, report in reports.items():
        for source in report.sources:
            warnings += _source_warnings(split, source)
    absent_in_val = [c.name for c in reports["val"].class_totals() if c.instances == 0]
    if absent_in_val and all(s.exhaustive for s in reports["val"].sources):
        warnings.append(f"data.val: classes {absent_in_val} have no instance in the validation split: their "
                        "metrics will be empty")
    for head in heads:
        if head.poorly_covered is not None and head.poorly_covered > POOR_ANCHOR_WARNING:
            warnings.append(f"model.heads.{head.task}: {head.poorly_covered:.0%} of training boxes have no anchor with "
                            f"shape IoU >= {POOR_ANCHOR_IOU}: set anchors: auto (fitted to the boxes) or give anchors "
                            "closer to the box sizes")
        if head.note:
            warnings.append(f"model.heads.{head.task}: {head.note}")
    return warnings


def _source_warnings(split: str, source: SourceReport) -> list[str]:
    where = f"data.{split} ({source.name}, {source.where})"
    warnings = []
    if source.problems:
        warnings.append(f"{where}: {len(source.problems)} entries skipped or unreadable (listed under problems; "
                        "with data.skip_invalid training skips them, without it they are errors)")
    if source.constant_images and len(source.constant_images) < source.readable:
        warnings.append(f"{where}: {len(source.constant_images)} image(s) constant after the image policy: "
                        f"{listed(source.constant_images)}")
    if source.unlabelled_images:
        warnings.append(f"{where}: {len(source.unlabelled_images)} of {source.unlabelled_counted_over} images with "
                        f"no label at all: {listed(source.unlabelled_images)}")
    return warnings


