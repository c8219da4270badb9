"""The JSON beside an exported model (`<model file>.json`): how to feed it and how to read what it returns.

Written so that someone without this repository (C++, a browser, another language's onnxruntime) can use the
file: the input's layout, range and size rule, the preprocessing the model was trained with, the classes, and
per output its shape, meaning and what decoding needs (YOLO anchors and strides, thresholds).
"""
from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from torch import nn

from heads.autoencoder import AutoencoderHead
from heads.classification import ClassificationHead
from heads.segmentation_head import SegmentationHead
from heads.vae import VAEHead
from heads.yolo import MAX_LOG_SCALE, YoloHead
from heads.yolo_v1 import YoloV1Head
from pipeline.inference.trained import TrainedModel

WRITER = "python -m pipeline export"   # marks a sidecar (and so its model file) as this command's own output
VERSIONED = ("torch", "onnx", "onnxruntime", "onnxscript")


def sidecar_path(model_path: Path) -> Path:
    return Path(f"{model_path}.json")


def read_sidecar(model_path: Path) -> dict | None:
    """The sidecar of `model_path` when there is a readable one, else None."""
    path = sidecar_path(model_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(model_path: Path, data: dict) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def build_sidecar(trained: TrainedModel, model_path: Path, format: str, names: list[str],
                  shapes: dict[str, str], input_shape: list[int | str], size_multiple: int, opset: int | None,
                  fallbacks: list[str]) -> dict:
    heads = trained.model.heads
    data = trained.config.data
    channels = int(trained.model.backbone.in_channels)
    dynamic_size = any(isinstance(d, str) for d in input_shape[2:])
    return {
        "written_by": WRITER,
        "format": format,
        "file": model_path.name,
        "checkpoint": str(trained.checkpoint.resolve()),
        "versions": {**_versions(), **({"opset": opset} if format == "onnx" else {})},
        "input": {
            "name": "image", "dtype": "float32", "layout": "NCHW", "shape": input_shape, "channels": channels,
            "range": [0.0, 1.0],
            "size_multiple": size_multiple if dynamic_size else None,
            "size_rule": (f"height and width multiples of {size_multiple} (the backbone's largest stride)"
                          if dynamic_size else f"fixed at {input_shape[2]} x {input_shape[3]}"),
            "note": "RGB (or the trained channel count) scaled to [0, 1]; the model normalises inside "
                    "(mean/std are part of the graph)",
        },
        "static_fallback": fallbacks,   # why a dimension asked to be dynamic is fixed; empty when none is
        "preprocessing": {
            "image_size": data.image_size, "resize": data.resize,
            "resize_meaning": ("stretched to image_size x image_size" if data.resize == "stretch" else
                               "scaled to fit image_size x image_size keeping the aspect ratio, padded"),
            "image_policy": trained.policy.to_dict(),
        },
        "class_names": list(trained.class_names),
        "category_ids": list(trained.category_ids),
        "outputs": [_output(trained, name, shapes[name]) for name in names],
        "outputs_note": ("onnxruntime returns the outputs under these names" if format == "onnx" else
                         "torch.jit.load(file)(image) returns a dict of tensors under these same names"),
        "tasks": {task: _task(trained, task, head) for task, head in heads.items()},
        "parity": None,
    }


def shape_pattern(first: tuple[int, ...], second: tuple[int, ...], first_input: tuple[int, ...],
                  second_input: tuple[int, ...]) -> str:
    """An output's shape in terms of the input's B, H, W, from its shapes at two inputs [B, C, H, W] that differ
    in batch, height and width by different steps: "[B, 4, H/8, W/8, 8]". A leading dimension is read as the
    batch first, the others as image sides first."""
    symbols = {"B": (first_input[0], second_input[0]), "H": (first_input[2], second_input[2]),
               "W": (first_input[3], second_input[3])}
    dims = []
    for index, (a, b) in enumerate(zip(first, second)):
        order = ("B", "H", "W") if index == 0 else ("H", "W", "B")
        dims.append(str(a) if a == b else _symbol(a, b, [(s, symbols[s]) for s in order]))
    return f"[{', '.join(dims)}]"


def _symbol(a: int, b: int, symbols: list[tuple[str, tuple[int, int]]]) -> str:
    for symbol, (x, y) in symbols:
        if (a, b) == (x, y):
            return symbol
        for factor in (2, 4, 8, 16, 32, 64):
            if (a * factor, b * factor) == (x, y):
                return f"{symbol}/{factor}"
    return "?"


def _output(trained: TrainedModel, name: str, shape: str) -> dict:
    task = _task_of(name, trained.model.heads)
    head = trained.model.heads[task]
    local = name[len(task) + 1:]
    return {"name": name, "task": task, "head": trained.config.model.heads[task].type, "kind": head.kind,
            "shape": shape, "meaning": output_meaning(head, task, local)}


def _task_of(name: str, heads: nn.ModuleDict) -> str:
    return max((task for task in heads if name.startswith(f"{task}_")), key=len)


def output_meaning(head: nn.Module, task: str, name: str) -> str:
    """One line: what the raw output is and how it becomes a prediction."""
    if isinstance(head, ClassificationHead):
        if head.options.multi_label:
            return "class logits [B, C]: sigmoid of each gives that class's probability (multi-label); " \
                   "index i = class_names[i]"
        return "class logits [B, C]: softmax gives the class probabilities; index i = class_names[i]"
    if isinstance(head, SegmentationHead):
        return "per-pixel class logits [B, K+1, H, W], class 0 = background, class k = class_names[k-1]; " \
               "argmax over dim 1 gives the mask"
    if isinstance(head, YoloHead):
        stride = int(name)
        return (f"YOLO raw map of stride {stride} [B, A, H/{stride}, W/{stride}, 5+C]: x, y, w, h, objectness, "
                f"class logits; decode with the head's anchors (tasks.{task}.anchors[\"{stride}\"]): centre = "
                f"(2*sigmoid(x, y) - 0.5 + (col, row)) * {stride}, size = anchor (w, h) * exp((w, h) capped at "
                f"{MAX_LOG_SCALE:.4f}), score per class = sigmoid(objectness) * sigmoid(class logit), then "
                f"per-class NMS")
    if isinstance(head, YoloV1Head):
        b = head.options.boxes_per_cell
        return (f"YOLOv1 grid [B, H/{head.options.stride}, W/{head.options.stride}, 5*{b}+C]: per box x, y, "
                f"sqrt w, sqrt h, confidence logits, then the cell's class logits; centre = ((col, row) + "
                f"sigmoid(x, y)) * (W/cols, H/rows), size = sigmoid(sqrt w, sqrt h)^2 * (W, H), score = "
                f"sigmoid(confidence) * softmax(class logits), then per-class NMS")
    if isinstance(head, VAEHead):
        return {"image": "reconstructed image [B, C, H, W] in [0, 1] (decoded from mu)",
                "mu": f"latent mean [B, Z, H/{head.stride}, W/{head.stride}] (what the decoder reads in eval)",
                "logvar": f"latent log-variance [B, Z, H/{head.stride}, W/{head.stride}]"}.get(name, name)
    if isinstance(head, AutoencoderHead):
        return "reconstructed image [B, C, H, W] in [0, 1]"
    return f"raw output {name!r} of a {head.kind} head; decode as heads/{type(head).__module__.split('.')[-1]}.py does"


def _task(trained: TrainedModel, task: str, head: nn.Module) -> dict:
    details: dict[str, Any] = {"head": trained.config.model.heads[task].type, "kind": head.kind}
    if isinstance(head, YoloHead):
        details["strides"] = list(head.strides)
        details["anchors"] = {str(s): [[round(float(v), 4) for v in pair] for pair in level.tolist()]
                              for s, level in zip(head.strides, head.anchors)}
        details["max_log_scale"] = MAX_LOG_SCALE
    if isinstance(head, YoloV1Head):
        details.update(stride=head.options.stride, boxes_per_cell=head.options.boxes_per_cell)
    if head.kind == "detection":
        options = head.options
        details.update(conf_threshold=options.conf_threshold, nms_iou=options.nms_iou,
                       max_detections=options.max_detections, boxes="xyxy pixels of the network input")
    if isinstance(head, VAEHead):
        details["latent_stride"] = head.stride
    return details


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found

