"""Validation: run the model over a loader, feed every head's metric, collect detections.

Under DDP each rank evaluates its own shard of the data; the metric states are merged on rank 0, which
computes every metric once (pycocotools scores all ranks' detections together) and shares the figures.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from datasets.sample import Batch
from pipeline.inference.file_coordinates import boxes_to_file
from pipeline.inference.predictor import Predictor
from pipeline.model import MultiTaskModel
from pipeline.runtime.distributed import DistInfo, broadcast_from_main, gather_to_main


@dataclass
class Evaluation:
    metrics: dict[str, float]                                      # "task/metric" -> value
    detections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> COCO results
    confusion_matrices: dict[str, torch.Tensor] = field(default_factory=dict)  # classification task -> counts


def coco_results(predictions: list[dict[str, torch.Tensor]], batch: Batch, category_ids: list[int]) -> list[dict]:
    """Detections in the COCO results format, in the coordinates of the image on disk (resize or letterbox
    undone with `Batch.to_original`, boxes clipped to the image)."""
    results = []
    for pred, image_id, size, to_original in zip(predictions, batch.image_id.tolist(), batch.orig_size.tolist(),
                                                 batch.to_original):
        boxes = boxes_to_file(pred["boxes"].detach().cpu(), to_original, tuple(size))
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": category_ids[label],
                            "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(score, 5)})
    return results


@torch.no_grad()
def evaluate(model: MultiTaskModel | Predictor, loader: DataLoader, device: torch.device, category_ids: list[int],
             autocast: AbstractContextManager | None = None, collect_detections: bool = False,
             dist_info: DistInfo = DistInfo()) -> Evaluation:
    """Per-task metrics of a model, or of a Predictor (TTA, an ensemble, an exported model's runner); with
    `collect_detections`, also every detection task's COCO results (the eval job writes them; validation
    during training only needs the metrics)."""
    predictor = model if isinstance(model, Predictor) else Predictor([model], autocast=autocast)
    predictor.eval()
    metrics = {task: head.metric() for task, head in predictor.heads.items()}
    detections: dict[str, list[dict]] = {t: [] for t, h in predictor.heads.items()
                                         if collect_detections and h.kind == "detection"}
    for batch in loader:
        batch = batch.to(device)
        decoded = predictor(batch.image)
        for task in predictor.heads:
            predictions = decoded[task]
            metrics[task].update(predictions, batch)
            if task in detections:
                detections[task] += coco_results(predictions, batch, category_ids)
    return broadcast_from_main(_merge_and_compute(gather_to_main(metrics, dist_info), detections), dist_info)


def _merge_and_compute(per_rank: list[dict[str, Any]] | None, detections: dict[str, list[dict]]) -> Evaluation | None:
    """Rank 0: fold the other ranks' metric states into its own and compute; the other ranks get None."""
    if per_rank is None:
        return None
    metrics = per_rank[0]
    for other in per_rank[1:]:
        for task, metric in metrics.items():
            metric.merge(other[task])
    flat = {f"{task}/{name}": value for task, metric in metrics.items() for name, value in metric.compute().items()}
    confusion = {task: metric.confusion_matrix() for task, metric in metrics.items()
                 if hasattr(metric, "confusion_matrix")}
    return Evaluation(metrics=flat, detections=detections, confusion_matrices=confusion)
