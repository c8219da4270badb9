"""The run report: one self-contained HTML page per run (pipeline/report/html_page.py), built from what a finished
run has: its config, its logged metrics (metrics.jsonl or MLflow history), the final evaluation, the model and a
validation batch.

Written at the end of training (pipeline/jobs/train.py) and by `python -m pipeline report RUN`
(pipeline/jobs/report.py); both log it as the run's `report.html` artifact.
"""
from __future__ import annotations

import dataclasses
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure

from datasets.sample import Batch
from pipeline.analysis.complexity import format_summary, measure_complexity
from pipeline.config.schema import Config, config_to_dict
from pipeline.engine.validation import Evaluation
from pipeline.model import MultiTaskModel, build_model
from pipeline.report import figures, samples
from pipeline.report.html_page import HtmlPage, figure_png
from pipeline.tracking.plots import confusion_matrix_figure
from pipeline.tracking.run_log import MetricRecord

FILE_NAME = "report.html"
EXPLAIN_INDEX = Path("explain") / "index.html"
COMPLEXITY_DEPTH = 2                # backbone stages and head blocks: the per-layer table would be pages long
SECTIONS = ("Run", "Losses", "Metrics", "Task weights", "Confusion matrices", "Per-class results",
            "Sample predictions", "Complexity", "Explain")


@dataclass
class ReportInputs:
    run_id: str
    config: Config                      # the run's own
    metrics: list[MetricRecord]         # every logged value, by step (the run log, or MLflow's history)
    class_names: list[str]
    evaluation: Evaluation              # final validation: metrics and confusion matrices
    model: MultiTaskModel               # the weights the evaluation measured
    val_batch: Batch                    # validation images with their ground truth, for the sample predictions
    run_folder: Path | None = None      # where explain/index.html would be
    status: str | None = None
    checkpoint: str | Path | None = None   # as the user named it (a path, or runs:/<id>)
    notes: list[str] = field(default_factory=list)   # e.g. where the metrics came from


@contextmanager
def one_thread():
    """torch on one CPU thread meanwhile. The report's tensors are tiny (a few images, their masks): with several
    intra-op threads each of its hundreds of small ops waits at a parallel region's barrier, which on a busy
    machine costs milliseconds apiece (the end of a tiny test training on a loaded 2-core machine: 4.4 s with 2
    threads, 0.85 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_report(inputs: ReportInputs, page_path: Path | None = None) -> HtmlPage:
    """The page; `page_path` (where it will be written) makes the explain link relative to it (default: the
    run folder's report.html)."""
    with one_thread():
        return _build(inputs, page_path)


def _build(inputs: ReportInputs, page_path: Path | None) -> HtmlPage:
    page = HtmlPage(f"Run report: {inputs.run_id}")
    tasks = list(inputs.model.heads)
    _run_section(page, inputs)
    _losses_section(page, inputs.metrics, tasks)
    _metrics_section(page, inputs, tasks)
    _weights_section(page, inputs.metrics)
    _confusion_section(page, inputs)
    _per_class_section(page, inputs, tasks)
    page.heading("Sample predictions")
    page.image(samples.samples_png(inputs.model, inputs.val_batch, inputs.class_names),
               "Validation images, one per row: " + " | ".join(samples.columns(inputs.model))
               + f". Predicted boxes scored at least {samples.BOX_SCORE}.")
    _complexity_section(page, inputs)
    _explain_section(page, inputs, page_path)
    return page


def write_report(inputs: ReportInputs, path: Path) -> Path:
    return build_report(inputs, Path(path)).write(Path(path))


def _run_section(page: HtmlPage, inputs: ReportInputs) -> None:
    page.heading("Run")
    config = inputs.config
    rows = [("run id", inputs.run_id), ("status", inputs.status or "unknown"),
            ("experiment", config.tracking.experiment), ("backbone", config.model.backbone.name),
            ("tasks", ", ".join(f"{task} ({head.kind})" for task, head in inputs.model.heads.items())),
            ("classes", ", ".join(inputs.class_names)), ("epochs", config.train.epochs)]
    if inputs.run_folder:
        rows.append(("run folder", str(inputs.run_folder)))
    if inputs.checkpoint:
        rows.append(("checkpoint", str(inputs.checkpoint)))
    page.facts(rows)
    for note in inputs.notes:
        page.paragraph(note, note=True)
    page.heading("Config", level=3)
    page.preformatted(yaml.safe_dump(config_to_dict(config), sort_keys=False), folded="the resolved config (YAML)")


def _losses_section(page: HtmlPage, metrics: list[MetricRecord], tasks: list[str]) -> None:
    page.heading("Losses")
    drawn = [(task, figures.task_loss_figure(metrics, task)) for task in tasks]
    for task, figure in drawn:
        if figure is not None:
            _image(page, figure, f"{task}: loss and loss terms per optimiser step")
    if all(figure is None for _, figure in drawn):
        page.paragraph("No training losses were logged for this run.", note=True)


def _metrics_section(page: HtmlPage, inputs: ReportInputs, tasks: list[str]) -> None:
    page.heading("Metrics")
    drawn = [(task, figures.task_metric_figure(inputs.metrics, task)) for task in tasks]
    for task, figure in drawn:
        if figure is not None:
            _image(page, figure, f"{task}: validation metrics after each epoch")
    if all(figure is None for _, figure in drawn):
        page.paragraph("No validation metrics were logged for this run.", note=True)
    final = {key: value for key, value in sorted(inputs.evaluation.metrics.items()) if key.count("/") == 1}
    page.heading("Final validation", level=3)
    page.table(["metric", "value"], [[key, value] for key, value in final.items()])


def _weights_section(page: HtmlPage, metrics: list[MetricRecord]) -> None:
    page.heading("Task weights")
    weights = figures.task_weights(metrics)
    if not weights:
        page.paragraph("No task weights were logged for this run.", note=True)
        return
    if figures.weights_constant(weights):
        page.paragraph("Fixed weights: " + ", ".join(f"{task} {values[-1]:g}"
                                                     for task, (_, values) in sorted(weights.items())) + ".")
        return
    _image(page, figures.task_weights_figure(weights), "each task's loss weight per optimiser step")


def _confusion_section(page: HtmlPage, inputs: ReportInputs) -> None:
    page.heading("Confusion matrices")
    if not inputs.evaluation.confusion_matrices:
        page.paragraph("No classification task.", note=True)
    for task, matrix in inputs.evaluation.confusion_matrices.items():
        _image(page, confusion_matrix_figure(matrix, inputs.class_names),
               f"{task}: validation counts, rows true class, columns predicted")


def _per_class_section(page: HtmlPage, inputs: ReportInputs, tasks: list[str]) -> None:
    """AP per class (detection), IoU per class with background first (segmentation), precision and recall
    (classification): whatever per-class values each task's metric computed."""
    page.heading("Per-class results")
    tables = 0
    missing = False
    for task in tasks:
        values = per_class_values(inputs.evaluation.metrics, task)
        if not values:
            continue
        tables += 1
        kind = inputs.model.heads[task].kind
        names = (["background"] if kind == "segmentation" else []) + list(inputs.class_names)
        columns = sorted(values)
        rows = [[name, *(values[column].get(index, "-") for column in columns)] for index, name in enumerate(names)]
        missing = missing or any(cell == "-" for row in rows for cell in row[1:])
        page.heading(f"{task} ({kind})", level=3)
        page.table(["class", *columns], rows)
    if not tables:
        page.paragraph("No per-class values were computed for this run.", note=True)
    if missing:
        page.paragraph("-: a class neither in the validation set nor predicted has no value.", note=True)


def per_class_values(metrics: dict[str, float], task: str) -> dict[str, dict[int, float]]:
    """{"AP": {class index: value}, ...} from an evaluation's "<task>/<metric>/<index>" values (NaN left out)."""
    found: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == task and parts[2].isdigit() and not math.isnan(value):
            found.setdefault(parts[1], {})[int(parts[2])] = value
    return found


def complexity_text(config: Config, model: MultiTaskModel, num_classes: int) -> str:
    """format_summary of the run's model at its input size, modules COMPLEXITY_DEPTH deep, without receptive
    fields: measuring them takes seconds even on a tiny model, and the report is written at the end of every
    training. Measured on a copy built on the meta device from the config (shapes, parameters and FLOPs without
    computing anything: 0.15 s where a forward of the tiny test model takes 0.5 s); on the trained model itself
    when the copy cannot be built or run there."""
    size = config.data.image_size
    shape = (config.data.channels, size, size)
    parts = ["backbone", *(f"heads.{task}" for task in model.heads)]
    try:
        model_config = dataclasses.replace(config.model, backbone=dataclasses.replace(config.model.backbone,
                                                                                      pretrained=False))
        with torch.device("meta"):
            measured = build_model(model_config, num_classes=num_classes, in_channels=config.data.channels)
        summary = measure_complexity(measured, shape, depth=COMPLEXITY_DEPTH, parts=parts, receptive_fields=False)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):  # an op with no meta kernel, data-dependent
        summary = measure_complexity(model, shape, depth=COMPLEXITY_DEPTH, parts=parts, receptive_fields=False)
    return format_summary(summary)


def _complexity_section(page: HtmlPage, inputs: ReportInputs) -> None:
    page.heading("Complexity")
    page.preformatted(complexity_text(inputs.config, inputs.model, len(inputs.class_names)))
    page.paragraph("Modules two levels deep, without receptive fields (they take seconds to measure). Every layer "
                   "with its receptive field and stride: python -m pipeline summary <the run's config.yaml>",
                   note=True)


def _explain_section(page: HtmlPage, inputs: ReportInputs, page_path: Path | None) -> None:
    page.heading("Explain")
    index = inputs.run_folder / EXPLAIN_INDEX if inputs.run_folder else None
    if index is not None and index.is_file():
        where = Path(page_path).parent if page_path else inputs.run_folder
        page.link(Path(os.path.relpath(index, where)).as_posix(), "Explanations of this run's predictions")
        return
    checkpoint = inputs.checkpoint or "<checkpoint>"
    page.paragraph(f"No explain outputs for this run yet. Make them with: python -m pipeline explain {checkpoint}",
                   note=True)


def _image(page: HtmlPage, figure: Figure, caption: str) -> None:
    page.image(figure_png(figure), caption)
