"""The contract every loss-weighting strategy meets, and the gradient helpers several of them share.

Per optimiser step pipeline/engine/optimizer_step.py calls `backward` once per micro-batch, then `finish` once
(before it unscales, clips and checks the gradients), then `after_step` after the optimiser stepped; the
trainer's hooks call `epoch_end` after each epoch. Every gradient a strategy writes is in the scaled domain
(times ctx.loss_scale), like the model's own, because the step's GradScaler.unscale_ divides them all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.runtime.distributed import DistInfo, all_reduce_mean
from pipeline.config.typed import ConfigError
from pipeline.weighting.context import BackwardContext


class Weighting(nn.Module):
    """Default behaviour: one backward of sum_t lambda_t L_t, DDP's reducer averaging the gradients.

    An nn.Module so learnable weights and state buffers are in its state_dict (exact resume).
    """

    # False: the strategy averages the gradients over ranks itself, so the trainer must run the plain
    # model, not the DDP wrapper (no reducer hooks, no no_sync).
    uses_ddp_reducer: bool = True

    @dataclass
    class Options:
        """The strategy's options under model.weighting (each strategy declares its own)."""

    def __init__(self, tasks: list[str], static_weights: dict[str, float], options: object = None) -> None:
        super().__init__()
        missing = [task for task in tasks if task not in static_weights]
        if missing:
            raise ConfigError(f"model.heads.{missing[0]}.weight: no static weight for task {missing[0]!r}")
        self.tasks = list(tasks)
        self.options = options if options is not None else self.Options()
        # Not persistent: it comes from the config, which the checkpoint holds anyway.
        self.register_buffer("static", torch.tensor([float(static_weights[t]) for t in tasks]), persistent=False)

    def backward(self, losses: dict[str, Tensor], ctx: BackwardContext, extra: Tensor | None = None) -> Tensor:
        """Back-propagate one micro-batch's task losses (unweighted) plus `extra`, a term outside the
        weighting (the l1 penalty), into .grad. Returns the objective, detached, for logging."""
        total = self.objective(self.stack(losses))
        if extra is not None:
            total = total + extra
        ctx.scale(total / ctx.micro_batches).backward()
        return total.detach()

    def objective(self, losses: Tensor) -> Tensor:
        """The scalar to minimise from the stacked task losses [T]."""
        return (self.lambdas() * losses).sum()

    def finish(self, ctx: BackwardContext) -> None:
        """Once per optimiser step, after the last micro-batch's backward."""

    def after_step(self) -> None:
        """After optimizer.step()."""

    def epoch_end(self, task_losses: dict[str, float]) -> None:
        """The epoch's mean train loss per task, identical on every rank."""

    def lambdas(self) -> Tensor:
        """The current weight per task, in self.tasks order, detached."""
        return self.static

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.lambdas().tolist()))

    def extra_parameters(self) -> list[nn.Parameter]:
        """Learnable weights for the main optimiser to step (see param_group)."""
        return list(self.parameters())

    def param_group(self, base_lr: float) -> dict | None:
        """The main optimiser's group for extra_parameters(), None when there are none: the strategy's `lr`
        option when it has one set, else base_lr; no weight decay (it would pull the weights toward 0)."""
        params = self.extra_parameters()
        if not params:
            return None
        lr = getattr(self.options, "lr", None)
        return {"name": "weighting", "params": params, "lr": base_lr if lr is None else lr, "weight_decay": 0.0}

    def stack(self, values: dict[str, Tensor | float]) -> Tensor:
        """Per-task values in self.tasks order, as float32 (losses come out of autocast in half precision)."""
        missing = [task for task in self.tasks if task not in values]
        if missing:
            raise KeyError(f"{type(self).__name__}: no loss for task {missing[0]!r}; got {', '.join(values)}")
        return torch.stack([torch.as_tensor(values[t], device=self.static.device).float() for t in self.tasks])


def require_positive(static: Tensor, tasks: list[str], strategy: str) -> None:
    """Strategies that start from the static weights and scale them multiplicatively need them > 0."""
    for task, weight in zip(tasks, static.tolist()):
        if weight <= 0:
            raise ConfigError(f"model.heads.{task}.weight: expected > 0 with weighting {strategy!r} "
                              f"(it is the task's starting weight), got {weight}")


def flat_grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """d loss / d params as one flat vector, the graph kept for more; zeros for a parameter the loss does not
    reach (a task that does not use it, a zero loss without a graph)."""
    grads = [None] * len(params)
    if params and loss.requires_grad:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
                     + [loss.new_zeros(0)])


def backward_into(loss: Tensor, params: list[nn.Parameter]) -> None:
    """Accumulate d loss / d params into their .grad, and nowhere else."""
    if params and loss.requires_grad:
        loss.backward(inputs=params)


def average_gradients(params: list[nn.Parameter], dist: DistInfo) -> None:
    """Mean of each parameter's .grad over ranks, in one collective (a missing .grad counts as zeros).

    Every rank must call it with the same parameters."""
    if not dist.enabled or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    averaged = all_reduce_mean(flat, dist)
    for p, grad in zip(params, averaged.split([p.numel() for p in params])):
        p.grad = grad.view_as(p)
