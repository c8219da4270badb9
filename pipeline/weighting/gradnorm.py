"""GradNorm (Chen et al., ICML 2018): learn task weights w_t so that every task's gradient norm on the last
shared layer W tracks how far behind that task is in training.

G_t = ||d(w_t L_t)/dW||,  r_t = (L_t / L_t(0)) / mean_i(L_i / L_i(0)),
L_grad = sum_t |G_t - mean(G) r_t^alpha|   (target detached), w.grad = dL_grad/dw;
the model's gradients come from sum_t w_t L_t (w detached); after each step w is renormalised to its
initial sum (the static weights; all 1: T, the paper's choice).

G_t and L_t are those of the whole step: the per-task gradients on W and the losses are summed over the
micro-batches and averaged over ranks before the update, so w's gradient is the same on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.runtime.distributed import all_reduce_mean
from pipeline.weighting.base import Weighting, flat_grad, require_positive
from pipeline.weighting.context import BackwardContext


class GradNorm(Weighting):
    @dataclass
    class Options:
        alpha: float = 1.5              # strength of the pull toward equal training rates (0: equal norms)
        lr: float | None = None         # learning rate of the weights (None: the optimiser's base lr)

    def __init__(self, tasks: list[str], static_weights: dict[str, float], options: Options | None = None) -> None:
        super().__init__(tasks, static_weights, options)
        require_positive(self.static, tasks, "gradnorm")
        self.task_weights = nn.Parameter(self.static.clone())
        # L_t(0), set at each task's first step with labels (0 until then: a task may be absent at first).
        self.register_buffer("initial_losses", torch.zeros(len(tasks)))
        self.step_grads: Tensor | None = None    # this step's sum over micro-batches of dL_t/dW, [T, |W|]
        self.step_losses: Tensor | None = None   # and of L_t / micro_batches, [T]

    def backward(self, losses: dict[str, Tensor], ctx: BackwardContext, extra: Tensor | None = None) -> Tensor:
        stacked = self.stack(losses)
        grads = torch.stack([flat_grad(ctx.scale(loss / ctx.micro_batches), ctx.last_shared) for loss in stacked])
        self.step_grads = grads if self.step_grads is None else self.step_grads + grads
        values = stacked.detach() / ctx.micro_batches
        self.step_losses = values if self.step_losses is None else self.step_losses + values
        return super().backward(losses, ctx, extra)

    def objective(self, losses: Tensor) -> Tensor:
        return (self.task_weights.detach() * losses).sum()

    def finish(self, ctx: BackwardContext) -> None:
        count = len(self.tasks)
        both = all_reduce_mean(torch.cat([self.step_grads.reshape(-1), self.step_losses]), ctx.dist)
        self.step_grads = self.step_losses = None
        grads, losses = both[:-count].view(count, -1) / ctx.loss_scale, both[-count:]
        norms = grads.norm(dim=1)
        # Tasks without labels this step (zero loss) or without a gradient on W sit this update out.
        active = (losses > 0) & (norms > 0)
        with torch.no_grad():
            first = active & (self.initial_losses == 0) & torch.isfinite(losses)
            self.initial_losses.copy_(torch.where(first, losses, self.initial_losses))
        grad = torch.zeros_like(self.task_weights)
        if int(active.sum()) >= 2:
            grad = self.weight_gradient(norms, losses, active)
        # In the scaled domain, like every other gradient the trainer's GradScaler will unscale.
        self.task_weights.grad = grad * ctx.loss_scale

    def weight_gradient(self, norms: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        """dL_grad/dw over the active tasks."""
        with torch.enable_grad():
            norm_of_weighted = self.task_weights[active] * norms[active]        # G_t
            rate = losses[active] / self.initial_losses[active]
            rate = rate / rate.mean()
            target = (norm_of_weighted.mean() * rate ** self.options.alpha).detach()
            (grad,) = torch.autograd.grad((norm_of_weighted - target).abs().sum(), self.task_weights)
        return grad

    def after_step(self) -> None:
        with torch.no_grad():
            # A weight pushed to or below zero would switch its task off for good: keep it small but positive.
            self.task_weights.clamp_(min=1e-3 * float(self.static.min()))
            self.task_weights.mul_(self.static.sum() / self.task_weights.sum())

    def lambdas(self) -> Tensor:
        return self.task_weights.detach()
