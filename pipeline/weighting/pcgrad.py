"""PCGrad (Yu et al., NeurIPS 2020): where two tasks' gradients on the shared parameters conflict
(negative dot product), project each onto the normal plane of the other before summing them.

The heads get the plain gradient of sum_t lambda_t L_t. Each task's gradient is lambda_t L_t's (static
weights; all 1: the paper). The surgery needs every task's gradient of the whole step, so the strategy
keeps them apart over the micro-batches and averages them over ranks itself (no DDP reducer). The
projection is invariant to a common scale, so it runs on the loss-scaled gradients as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.runtime.distributed import all_reduce_mean
from pipeline.weighting.base import Weighting, backward_into, flat_grad
from pipeline.weighting.context import BackwardContext


class PCGrad(Weighting):
    uses_ddp_reducer = False

    @dataclass
    class Options:
        seed: int = 0                   # of the order in which each task is projected against the others

    def __init__(self, tasks: list[str], static_weights: dict[str, float], options: Options | None = None) -> None:
        super().__init__(tasks, static_weights, options)
        # The order generator is seeded from the step count, so it is the same on every rank and after resume.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.step_grads: Tensor | None = None    # this step's per-task gradients on ctx.shared, [T, |shared|]

    def backward(self, losses: dict[str, Tensor], ctx: BackwardContext, extra: Tensor | None = None) -> Tensor:
        weighted = self.static * self.stack(losses)
        scaled = ctx.scale(weighted / ctx.micro_batches)
        grads = torch.stack([flat_grad(loss, ctx.shared) for loss in scaled])
        self.step_grads = grads if self.step_grads is None else self.step_grads + grads
        backward_into(scaled.sum(), ctx.task_specific)
        total = weighted.sum()
        if extra is not None:   # outside the surgery: straight into every parameter's .grad
            backward_into(ctx.scale(extra / ctx.micro_batches), ctx.shared + ctx.task_specific)
            total = total + extra
        return total.detach()

    def finish(self, ctx: BackwardContext) -> None:
        params = ctx.shared + ctx.task_specific
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = self.step_grads
        self.step_grads = None
        # One collective for the per-task gradients and the heads' (and penalty's) .grad.
        flat = torch.cat([grads.reshape(-1)] + [p.grad.reshape(-1) for p in params])
        flat = all_reduce_mean(flat, ctx.dist)
        grads = flat[:grads.numel()].view_as(grads)
        for p, grad in zip(params, flat[grads.numel():].split([p.numel() for p in params])):
            p.grad.copy_(grad.view_as(p))
        generator = torch.Generator().manual_seed(self.options.seed + int(self.steps))
        surgery = project_conflicting(grads, generator).sum(dim=0)
        for p, grad in zip(ctx.shared, surgery.split([p.numel() for p in ctx.shared])):
            p.grad.add_(grad.view_as(p))
        self.steps += 1


def project_conflicting(grads: Tensor, generator: torch.Generator) -> Tensor:
    """Each row g_i of [T, N], projected off every other task's original g_j it conflicts with (g_i.g_j < 0),
    the others visited in a random order: g_i -= (g_i.g_j / |g_j|^2) g_j. Non-finite values stay non-finite
    (the comparisons are False, nothing is masked), so the trainer's check still sees them."""
    projected = grads.clone()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j == i:
                continue
            dot, norm_sq = projected[i] @ grads[j], grads[j] @ grads[j]
            if dot < 0 and norm_sq > 0:     # a zero gradient conflicts with nothing: no division by zero
                projected[i] -= dot / norm_sq * grads[j]
    return projected
