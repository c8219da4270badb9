"""The learning-rate range test's arithmetic (Smith, "Cyclical Learning Rates for Training Neural Networks",
2017; as fastai's lr_find runs it): the exponential lr sweep, the smoothed loss, when to stop, the suggested lr,
and the loss-versus-lr figure. pipeline/jobs/lr_find.py runs the training steps.

The loss is smoothed with a bias-corrected exponential moving average. Two suggestions are reported: where the
smoothed loss falls fastest against log(lr) (the sweep's first and last few points left out, as their slope is
noise), and the lr of the lowest smoothed loss divided by ten (the loss is about to diverge there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

EDGE_POINTS = 5     # points at each end of the curve the steepest-slope search leaves out, when it has enough


def lr_at(step: int, steps: int, start: float, end: float) -> float:
    """The sweep's lr at `step` of `steps`: start at the first, end at the last, geometric in between."""
    return start * (end / start) ** (step / max(steps - 1, 1))


@dataclass
class Curve:
    """The sweep so far: each step's lr, raw loss and smoothed loss."""
    smoothing: float = 0.98             # the moving average's beta; 0: no smoothing
    diverge: float = 4.0                # stop once the smoothed loss passes this times its lowest
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped_early: bool = False
    _average: float = 0.0

    def add(self, lr: float, loss: float) -> bool:
        """Record one step; False when the sweep should stop (the loss diverged or is not finite)."""
        if not math.isfinite(loss):
            self.stopped_early = True
            return False
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        value = self._average / (1 - self.smoothing ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(value)
        if len(self.smoothed) > 1 and value > self.diverge * min(self.smoothed):
            self.stopped_early = True
            return False
        return True


@dataclass
class Suggestion:
    steepest: float                     # lr where the smoothed loss falls fastest
    min_loss_tenth: float               # lr of the lowest smoothed loss / 10 (at least the sweep's start)


def suggest(curve: Curve) -> Suggestion:
    if len(curve.lrs) < 2:
        raise ValueError(f"lr range test: {len(curve.lrs)} step(s) recorded before the loss diverged; start the "
                         "sweep lower (--start) or use more --steps")
    lrs, smoothed = np.asarray(curve.lrs), np.asarray(curve.smoothed)
    slope = np.gradient(smoothed, np.log10(lrs))
    edge = EDGE_POINTS if len(lrs) > 4 * EDGE_POINTS else 0
    inner = slope[edge:len(slope) - edge]
    steepest = lrs[edge + int(np.argmin(inner))]
    tenth = max(float(lrs[int(np.argmin(smoothed))]) / 10, float(lrs[0]))
    return Suggestion(float(steepest), tenth)


def curve_figure(curve: Curve, suggestion: Suggestion) -> Figure:
    """Loss against lr, log x: the raw losses faint, the smoothed curve, and both suggestions."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(curve.lrs, curve.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    axes.plot(curve.lrs, curve.smoothed, color="tab:blue", linewidth=1.8, label="smoothed loss")
    axes.axvline(suggestion.steepest, color="tab:red", linestyle="--",
                 label=f"steepest descent: {suggestion.steepest:.2e}")
    axes.axvline(suggestion.min_loss_tenth, color="tab:green", linestyle=":",
                 label=f"min loss / 10: {suggestion.min_loss_tenth:.2e}")
    axes.set_xscale("log")
    low, high = min(curve.smoothed), max(curve.smoothed)
    top = min(high, curve.diverge * low) if low > 0 else high     # the diverging tail would flatten the rest
    pad = 0.05 * (top - low) or 0.05 * abs(top) or 1.0
    axes.set_ylim(low - pad, top + pad)
    axes.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3, which="both")
    return figure
