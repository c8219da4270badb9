"""The run report's own figures: per-task loss and metric curves and the task weights over time.

matplotlib.figure.Figure only (no pyplot, nothing to close). Figures are small and drawn without constrained
layout, which costs more than the drawing itself: the report is built at the end of every training.
"""
from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from pipeline.tracking.run_log import MetricRecord

PANEL = (2.6, 1.9)                  # inches per small plot

class PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of ticks to label, written 0.6 rather than 6e-01."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


Series = dict[str, tuple[list[int], list[float]]]


def series(metrics: list[MetricRecord], keep) -> Series:
    """key -> (steps, values) of the finite values whose key `keep(key)` accepts, in step order."""
    found: Series = {}
    for metric in sorted(metrics, key=lambda m: m.step):
        if keep(metric.key) and math.isfinite(metric.value):
            steps, values = found.setdefault(metric.key, ([], []))
            steps.append(metric.step)
            values.append(metric.value)
    return found


def task_loss_figure(metrics: list[MetricRecord], task: str) -> Figure | None:
    """The task's per-step loss and its loss terms (train/<task>/*), log scale when all positive; None when the
    run logged none."""
    lines = series(metrics, lambda key: key.startswith(f"train/{task}/"))
    if not lines:
        return None
    figure = Figure(figsize=(PANEL[0] * 1.5, PANEL[1] * 1.3))
    axes = figure.add_subplot()
    for key, (steps, values) in sorted(lines.items(), key=lambda item: not item[0].endswith("/loss")):
        axes.plot(steps, values, label=key.removeprefix(f"train/{task}/"), linewidth=1.6 if key.endswith("/loss") else 1)
    if all(v > 0 for _, values in lines.values() for v in values):
        axes.set_yscale("log")
        # Plain-text labels: log axes label their ticks in mathtext by default, which doubles the figure's cost.
        axes.yaxis.set_major_formatter(PlainLogFormatter())
        axes.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    axes.set(xlabel="step", title=f"{task}: training loss")
    axes.legend(fontsize="x-small")
    axes.grid(alpha=0.3)
    _margins(figure, left=0.6)
    return figure


def epochs_of_steps(metrics: list[MetricRecord]) -> dict[int, float]:
    """step -> epoch number, from the "epoch" value logged with each epoch's figures."""
    return {m.step: m.value for m in metrics if m.key == "epoch"}


def task_metric_figure(metrics: list[MetricRecord], task: str) -> Figure | None:
    """One small panel per validation metric of the task (val/<task>/<metric>, per-class values left out: they are
    in the table), against the epoch; None when the run logged none."""
    prefix = f"val/{task}/"
    lines = series(metrics, lambda key: key.startswith(prefix) and "/" not in key[len(prefix):])
    if not lines:
        return None
    epochs = epochs_of_steps(metrics)
    columns = min(len(lines), 4)
    rows = math.ceil(len(lines) / columns)
    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows))
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (key, (steps, values)) in zip(grid.flat, sorted(lines.items())):
        known = all(step in epochs for step in steps)
        x = [epochs[step] for step in steps] if known else steps
        axes.plot(x, values, marker="o", markersize=3, linewidth=1.2)
        axes.set_title(key.removeprefix(prefix), fontsize="small")
        axes.set_xlabel("epoch" if known else "step", fontsize="small")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize="x-small")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(lines):]:
        axes.set_axis_off()
    _margins(figure, wspace=0.45, hspace=0.6)
    return figure


def task_weights(metrics: list[MetricRecord]) -> Series:
    """task -> (steps, weights) from train/weight/<task>."""
    return {key.removeprefix("train/weight/"): points
            for key, points in series(metrics, lambda key: key.startswith("train/weight/")).items()}


def weights_constant(weights: Series) -> bool:
    return all(max(values) - min(values) <= 1e-9 * max(1.0, abs(max(values))) for _, values in weights.values())


def task_weights_figure(weights: Series) -> Figure:
    figure = Figure(figsize=(PANEL[0] * 1.8, PANEL[1] * 1.3))
    axes = figure.add_subplot()
    for task, (steps, values) in sorted(weights.items()):
        axes.plot(steps, values, label=task, linewidth=1.2)
    axes.set(xlabel="step", ylabel="weight", title="task weights")
    axes.legend(fontsize="x-small")
    axes.grid(alpha=0.3)
    _margins(figure)
    return figure


def _margins(figure: Figure, left: float = 0.55, right: float = 0.12, bottom: float = 0.45, top: float = 0.3,
             **space: float) -> None:
    """Margins in inches (tick labels need the same room in a narrow figure as in a wide one); constrained
    layout would find them, at several times the cost of drawing."""
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                           **space)
