"""Figures logged with a run: loss curves, confusion matrices, predictions drawn on validation images.

Built on matplotlib.figure.Figure directly (Agg canvas, nothing registered with pyplot), so no global
figure list grows and nothing needs a display. Log them with Tracker.log_figure.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from datasets.sample import Batch
from pipeline.model import MultiTaskModel
from pipeline.tracking.run_log import MetricRecord

MAX_IMAGES = 4
MAX_BOXES = 20                          # per image, most confident first: more only hides the image
MASK_ALPHA = 0.45
CELL_INCHES = 2.6


def loss_curves(metrics: list[MetricRecord]) -> Figure:
    """One line per per-step loss ("train/loss", "train/cls/loss", ...: every "train/" key ending in "loss")
    against the step, from the run's logged values; log scale when every value is positive, as task losses
    differ by orders of magnitude."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for metric in sorted(metrics, key=lambda m: m.step):
        if metric.key.startswith("train/") and metric.key.endswith("loss") and math.isfinite(metric.value):
            steps, points = series.setdefault(metric.key, ([], []))
            steps.append(metric.step)
            points.append(metric.value)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for key, (steps, points) in sorted(series.items()):
        axes.plot(steps, points, label=key, linewidth=1.2)
    if series and all(v > 0 for _, points in series.values() for v in points):
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel="loss", title="training losses")
    if series:
        axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def confusion_matrix_figure(matrix: Tensor, class_names: list[str]) -> Figure:
    """[C, C] counts (rows true, columns predicted), or multi-label [C, 2, 2] ([[TN, FP], [FN, TP]] per
    class, one panel each), as ClassificationMetric / MultiLabelMetric.confusion_matrix() return them."""
    matrix = matrix.detach().cpu()
    if matrix.dim() == 3:
        figure = Figure(figsize=(2.6 * len(matrix), 2.8), layout="constrained")
        for i, (panel, axes) in enumerate(zip(matrix, figure.subplots(1, len(matrix), squeeze=False)[0])):
            _draw_counts(axes, panel, ["no", "yes"], title=_name(class_names, i))
        return figure
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    _draw_counts(figure.add_subplot(), matrix, class_names, title="confusion matrix")
    return figure


def _draw_counts(axes, counts: Tensor, names: list[str], title: str) -> None:
    axes.imshow(counts.numpy(), cmap="Blues")
    ticks = range(len(names))
    axes.set_xticks(ticks, names, rotation=45, ha="right")
    axes.set_yticks(ticks, names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    peak = counts.max().item() if counts.numel() else 0
    for row, values in enumerate(counts.tolist()):
        for col, value in enumerate(values):
            axes.text(col, row, str(int(value)), ha="center", va="center", fontsize="small",
                      color="white" if value > peak / 2 else "black")


def prediction_figure(images: Tensor, predictions: dict[str, Any], kinds: dict[str, str], class_names: list[str],
                      max_images: int = MAX_IMAGES) -> Figure:
    """One row per image (up to `max_images`): the image titled with each classification task's top class,
    with each detection task's boxes and labels; then one panel per segmentation task (its mask over the
    image) and one per reconstruction task (the reconstruction beside the input).

    `predictions`: task -> that head's decode() output; `kinds`: task -> head.kind. Images (and
    reconstructions) of other than 3 channels are drawn as display_channels() picks them."""
    images = images[:max_images].detach().float().cpu().clamp(0, 1)
    masks = [t for t in predictions if kinds[t] == "segmentation"]
    recons = [t for t in predictions if kinds[t] == "reconstruction"]
    columns = 1 + len(masks) + len(recons)
    figure = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * len(images)), layout="constrained")
    grid = figure.subplots(len(images), columns, squeeze=False)
    for i, row in enumerate(grid):
        shown = picture(images[i])
        _draw_image(row[0], shown, _class_title(i, predictions, kinds, class_names))
        for task in predictions:
            if kinds[task] == "detection":
                _draw_boxes(row[0], predictions[task][i], class_names)
        for axes, task in zip(row[1:], masks):
            _draw_image(axes, shown, task)
            mask = predictions[task][i].detach().cpu()
            height, width = shown.shape[:2]
            # Stretched over the image (extent) in case the head predicts at another resolution; 0 = background.
            axes.imshow(mask.numpy(), cmap="tab10", vmin=0, vmax=9, alpha=(mask > 0).float().numpy() * MASK_ALPHA,
                        interpolation="nearest", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        for axes, task in zip(row[1 + len(masks):], recons):
            _draw_image(axes, picture(predictions[task][i]), task)
    return figure


@torch.no_grad()
def model_prediction_figure(model: MultiTaskModel, batch: Batch, class_names: list[str],
                            max_images: int = MAX_IMAGES) -> Figure:
    """Run `model` in eval mode on the first images of a validation batch and draw its predictions; the
    model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = batch.image[:max_images].to(device)
        outputs = model(images)
        predictions = {task: head.decode(outputs[task]) for task, head in model.heads.items()}
    finally:
        model.train(was_training)
    kinds = {task: head.kind for task, head in model.heads.items()}
    return prediction_figure(images, predictions, kinds, class_names, max_images)


def display_channels(images: Tensor) -> Tensor:
    """[..., C, H, W] -> what can be shown of it: the first three channels as RGB for C >= 3 (the extra bands of
    a multispectral image have no colour), channel 0 alone for C < 3 (shown grey)."""
    return images[..., :3, :, :] if images.shape[-3] >= 3 else images[..., :1, :, :]


def picture(image: Tensor):
    """[C, H, W] in [0, 1] (any device or dtype; clamped) -> an array for imshow: HxWx3 RGB, or HxW grey (see
    display_channels). Explain's figures draw their images with it too."""
    shown = display_channels(image.detach().float().cpu().clamp(0, 1))
    return shown[0].numpy() if shown.shape[0] == 1 else shown.permute(1, 2, 0).numpy()


def _draw_image(axes, picture, title: str) -> None:
    if picture.ndim == 2:  # one channel: grey, not a colour map stretched to the image's own range
        axes.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axes.imshow(picture)
    axes.set_title(title, fontsize="small")
    axes.set_axis_off()


def _class_title(i: int, predictions: dict[str, Any], kinds: dict[str, str], class_names: list[str]) -> str:
    parts = []
    for task, value in predictions.items():
        if kinds[task] == "classification":
            probability, label = value[i].detach().float().max(dim=0)
            parts.append(f"{task}: {_name(class_names, int(label))} {float(probability):.2f}")
    return "\n".join(parts) or "input"


def _draw_boxes(axes, detections: dict[str, Tensor], class_names: list[str]) -> None:
    order = detections["scores"].detach().cpu().argsort(descending=True)[:MAX_BOXES]
    boxes, scores = detections["boxes"].detach().cpu()[order], detections["scores"].detach().cpu()[order]
    labels = detections["labels"].detach().cpu()[order]
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        color = f"C{label % 10}"
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        axes.text(x1, y1, f"{_name(class_names, label)} {score:.2f}", color="white", fontsize="x-small",
                  va="bottom", bbox={"facecolor": color, "alpha": 0.7, "pad": 1, "linewidth": 0})


def _name(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def run_figures(metrics: list[MetricRecord], confusion_matrices: dict[str, Tensor],
                model: MultiTaskModel, val_batch: Batch, class_names: list[str]) -> dict[str, Figure]:
    """Every figure of a finished run, by artifact path: plots/losses.png (from the run's logged `metrics`),
    plots/confusion/<task>.png (one per classification task) and plots/predictions.png (the model's
    predictions on `val_batch`)."""
    figures = {"plots/losses.png": loss_curves(metrics)}
    for task, matrix in confusion_matrices.items():
        figures[f"plots/confusion/{task}.png"] = confusion_matrix_figure(matrix, class_names)
    figures["plots/predictions.png"] = model_prediction_figure(model, val_batch, class_names)
    return figures
