"""Predictions of one batch from one or several runners (an ensemble) and test-time views (TTA), merged.

Every runner sees every view of the batch (flipped, rescaled); each prediction is moved back to the batch's
own geometry and merged per head kind (pipeline/inference/kinds.py): probabilities and images averaged,
boxes fused. One runner and the plain view is exactly `head.decode` of the model's outputs.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.inference.box_merging import METHODS
from pipeline.inference.kinds import ops_for
from pipeline.inference.runner import Runner

# `--tta` alone: the mirror image and a smaller and a larger scale (with the plain view: 4 passes).
DEFAULT_TTA = "hflip,scale=0.83,scale=1.2"


@dataclass(frozen=True)
class View:
    """The image flipped, then resized by `scale` (sides rounded to the backbone's stride)."""
    hflip: bool = False
    vflip: bool = False
    scale: float = 1.0

    @property
    def plain(self) -> bool:
        return not (self.hflip or self.vflip) and self.scale == 1.0


def parse_views(spec: str | None) -> list[View]:
    """`--tta` value -> the views, the plain one first. Items, comma-separated: hflip, vflip, hvflip (both),
    scale=S. "default" is DEFAULT_TTA; None or "" is the plain view alone."""
    if not spec:
        return [View()]
    views = [View()]
    for item in (DEFAULT_TTA if spec == "default" else spec).split(","):
        item = item.strip()
        if item in ("hflip", "vflip", "hvflip"):
            views.append(View(hflip="h" in item, vflip="v" in item))
        elif item.startswith("scale="):
            try:
                scale = float(item.split("=", 1)[1])
            except ValueError:
                scale = 0.0
            if not 0.25 <= scale <= 4.0:
                raise ValueError(f"--tta: {item!r}: expected scale=S with S between 0.25 and 4")
            views.append(View(scale=scale))
        else:
            raise ValueError(f"--tta: unknown view {item!r}; expected hflip, vflip, hvflip or scale=S, "
                             "comma-separated")
    return list(dict.fromkeys(views))


class Predictor:
    def __init__(self, runners: list[Runner], views: list[View] | None = None, box_merge: str = "wbf",
                 size_multiple: int = 32, autocast: AbstractContextManager | None = None) -> None:
        if not runners:
            raise ValueError("a predictor needs at least one model")
        if box_merge not in METHODS:
            raise ValueError(f"--box-merge: expected one of {METHODS}, got {box_merge!r}")
        _check_same_tasks(runners)
        self.runners, self.views = runners, views or [View()]
        self.box_merge, self.size_multiple, self.autocast = box_merge, size_multiple, autocast
        self.heads = runners[0].heads   # merging uses the first model's options (NMS IoU, detections cap)

    @property
    def passes(self) -> int:
        return len(self.runners) * len(self.views)

    def eval(self) -> Predictor:
        for runner in self.runners:
            if hasattr(runner, "eval"):
                runner.eval()
        return self

    @torch.no_grad()
    def __call__(self, image: Tensor) -> dict[str, Any]:
        """Each task's predictions for the batch, in head.decode's format, at the batch's geometry."""
        if self.passes == 1 and self.views[0].plain:
            outputs = self._run(self.runners[0], image)
            return {task: head.decode(outputs[task]) for task, head in self.runners[0].heads.items()}
        return {task: ops_for(self.heads[task]).final(soft) for task, soft in self.soft(image).items()}

    @torch.no_grad()
    def soft(self, image: Tensor) -> dict[str, Any]:
        """Each task's merged predictions in their mergeable form (kinds.py), at the batch's geometry."""
        size = (image.shape[-2], image.shape[-1])
        per_task: dict[str, list[Any]] = {task: [] for task in self.heads}
        for view in self.views:
            viewed = self._apply(view, image)
            viewed_size = (viewed.shape[-2], viewed.shape[-1])
            for runner in self.runners:
                outputs = self._run(runner, viewed)
                for task, head in runner.heads.items():
                    ops = ops_for(head)
                    prediction = ops.resize(ops.soft(head, outputs[task]), viewed_size, size)
                    per_task[task].append(ops.unflip(prediction, view.hflip, view.vflip, size))
        return {task: ops_for(self.heads[task]).merge(views, self.heads[task], self.box_merge)
                for task, views in per_task.items()}

    def _run(self, runner: Runner, image: Tensor) -> dict[str, Any]:
        with self.autocast or nullcontext():
            return runner(image)

    def _apply(self, view: View, image: Tensor) -> Tensor:
        dims = [d for d, flipped in ((-1, view.hflip), (-2, view.vflip)) if flipped]
        if dims:
            image = image.flip(dims)
        if view.scale != 1.0:
            size = [max(self.size_multiple, round(side * view.scale / self.size_multiple) * self.size_multiple)
                    for side in image.shape[-2:]]
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=view.scale < 1)
        return image


def _check_same_tasks(runners: list[Runner]) -> None:
    first = {task: head.kind for task, head in runners[0].heads.items()}
    for index, runner in enumerate(runners[1:], start=2):
        other = {task: head.kind for task, head in runner.heads.items()}
        if other != first:
            raise ValueError(f"ensemble: model {index} has tasks {other}, model 1 has {first}; an ensemble "
                             "merges models of the same tasks")
