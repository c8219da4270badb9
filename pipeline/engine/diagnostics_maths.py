"""The figures and warning rules of the training diagnostics (the hook is pipeline/engine/diagnostics.py).

Plain functions of parameters, tensors and numbers, so each figure and each rule can be checked alone:

- groups: each backbone stage ("backbone/stage<i>") and each head ("head/<task>"); a group's figure takes all
  its tensors together (the norm of their concatenation), and a group without gradients (frozen) has none.
- update ratio: ||w_after - w_before|| / ||w_before|| of one optimiser step. About 1e-3 is the usual healthy
  value (cs231n's rule of thumb): far below, the group barely learns; far above, it is being thrown around.
- dead fraction: the share of a stage output's channels that are never > 0, over the whole batch and every
  position. For a stage ending in a ReLU such a channel passes no gradient: it has died.

The warning rules (each a person would act on):

- update ratio: a group's ratio outside `band` on `patience` logged steps in a row (RatioWatch).
- loss not falling: the mean train loss of the latest `window` steps after warm-up is not lower than that of
  the first `window` steps after warm-up by `min_drop` of its size (LossWatch, loss_not_falling).
- overfitting: over the last `patience` epochs the epoch's train loss fell by `min_drop` of its size while the
  monitored val metric was worse at each of them than at the epoch before them (overfitting).
- underfitting: `warmup_epochs` + `patience` epochs on, the train loss is still at least `fraction` of the first
  epoch's (underfitting).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.model import MultiTaskModel

TRAIN_LOSS = "epoch/train/loss"     # the epoch's mean train loss, as the trainer's history records it


# ---- figures ----------------------------------------------------------------------------------------------

def parameter_groups(model: MultiTaskModel) -> dict[str, list[nn.Parameter]]:
    """Each backbone stage's and each head's parameters, by group name; groups without parameters left out."""
    groups = {f"backbone/stage{i}": list(stage.parameters()) for i, stage in enumerate(model.backbone.stages)}
    groups.update({f"head/{task}": list(head.parameters()) for task, head in model.heads.items()})
    return {name: params for name, params in groups.items() if params}


def grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """The L2 norm of each group's gradient (its tensors together); groups without any gradient left out."""
    norms = {name: torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
             for name, params in groups.items() if any(p.grad is not None for p in params)}
    return dict(zip(norms, torch.stack(list(norms.values())).float().tolist())) if norms else {}


def weights_before(groups: dict[str, list[nn.Parameter]]) -> dict[str, list[tuple[nn.Parameter, Tensor]]]:
    """A copy of each parameter the step will update (those with a gradient), by group."""
    copies = {name: [(p, p.detach().clone()) for p in params if p.grad is not None] for name, params in groups.items()}
    return {name: pairs for name, pairs in copies.items() if pairs}


def update_ratios(before: dict[str, list[tuple[nn.Parameter, Tensor]]]) -> dict[str, float]:
    """||w_after - w_before|| / ||w_before|| of each group, from weights_before() taken before the step; NaN for a
    group whose weights were all zero."""
    ratios = []
    for pairs in before.values():
        update = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm((p.detach() - old).float())
                                                       for p, old in pairs]))
        weight = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(old.float()) for _, old in pairs]))
        ratios.append(torch.where(weight > 0, update / weight, torch.full_like(weight, math.nan)))
    return dict(zip(before, torch.stack(ratios).tolist())) if ratios else {}


def activation_stats(feature: Tensor) -> dict[str, float]:
    """Mean and std over every value of a [B, C, ...] map, and the fraction of its C channels never > 0."""
    values = feature.detach().float()
    alive = (values > 0).transpose(0, 1).reshape(values.shape[1], -1).any(dim=1)
    return {"mean": float(values.mean()), "std": float(values.std()),
            "dead_fraction": 1.0 - float(alive.float().mean())}


@torch.no_grad()
def stage_activations(model: MultiTaskModel, images: Tensor, autocast) -> dict[str, dict[str, float]]:
    """activation_stats of each backbone stage's output on `images`, in eval mode; every module's own training
    flag is put back afterwards (frozen stages keep their BatchNorm in eval mode within a training epoch)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with autocast:
            features = model.backbone(images)
    finally:
        for module, training in modes.items():
            module.training = training
    return {f"backbone/stage{i}": activation_stats(feature) for i, feature in enumerate(features) if feature.dim() >= 2}


# ---- warning rules ----------------------------------------------------------------------------------------

@dataclass
class RatioWatch:
    """Per group, the logged steps in a row whose update ratio was outside `band`."""
    band: tuple[float, float]
    patience: int
    outside: dict[str, int] = field(default_factory=dict)

    def update(self, ratios: dict[str, float]) -> list[str]:
        """The groups whose ratio has just been outside the band for `patience` logged steps in a row: each run
        of them is reported once. A NaN ratio (zero weights) counts as inside."""
        low, high = self.band
        fired = []
        for name, ratio in ratios.items():
            out = ratio < low or ratio > high
            self.outside[name] = self.outside.get(name, 0) + 1 if out else 0
            if self.outside[name] == self.patience:
                fired.append(name)
        return fired


def loss_not_falling(first: list[float], recent: list[float], min_drop: float) -> bool:
    """The mean of `recent` is not lower than the mean of `first` by `min_drop` of its size (losses may be < 0:
    uncertainty weighting's total is)."""
    start, now = sum(first) / len(first), sum(recent) / len(recent)
    return not start - now >= min_drop * abs(start)


@dataclass
class LossWatch:
    """The train losses of the first `window` steps after warm-up, and of the latest `window` after those."""
    window: int
    min_drop: float
    first: list[float] = field(default_factory=list)
    recent: deque = field(default_factory=deque)
    stalled: bool = False

    def add(self, loss: float) -> bool:
        """One trained step's loss, after warm-up; True when the loss has just stopped falling (reported once,
        again only after it has fallen in between)."""
        if len(self.first) < self.window:
            self.first.append(loss)
            return False
        self.recent.append(loss)
        if len(self.recent) > self.window:
            self.recent.popleft()
        if len(self.recent) < self.window:
            return False
        stalled = loss_not_falling(self.first, list(self.recent), self.min_drop)
        fired, self.stalled = stalled and not self.stalled, stalled
        return fired

    def means(self) -> tuple[float, float]:
        return sum(self.first) / len(self.first), sum(self.recent) / len(self.recent)


def overfitting(history: list[dict[str, float]], monitor: str | None, mode: str, patience: int,
                min_drop: float) -> bool:
    """Over the last `patience` epochs the train loss fell by `min_drop` of its size while `monitor` (a val metric,
    better when higher for mode max) was worse at each of them than at the epoch before them. False without a
    monitored metric or with fewer than patience + 1 epochs."""
    window = history[-(patience + 1):]
    if monitor is None or len(window) < patience + 1 or any(TRAIN_LOSS not in e or monitor not in e for e in window):
        return False
    start, end = window[0][TRAIN_LOSS], window[-1][TRAIN_LOSS]
    sign = 1.0 if mode == "max" else -1.0
    worse = all(sign * (epoch[monitor] - window[0][monitor]) < 0 for epoch in window[1:])
    return start - end >= min_drop * abs(start) and worse


def underfitting(history: list[dict[str, float]], warmup_epochs: int, patience: int, fraction: float) -> bool:
    """`warmup_epochs` + `patience` epochs or more, and the latest train loss is still at least `fraction` of the
    first epoch's (it fell by less than 1 - fraction of its size)."""
    if len(history) < warmup_epochs + patience or TRAIN_LOSS not in history[0] or TRAIN_LOSS not in history[-1]:
        return False
    first, last = history[0][TRAIN_LOSS], history[-1][TRAIN_LOSS]
    return first - last < (1.0 - fraction) * abs(first)
