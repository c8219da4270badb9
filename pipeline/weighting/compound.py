"""The trainer's record of one micro-batch's losses, and the fixed weighted sum it back-propagated until now."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CompoundLoss:
    total: Tensor                      # what backward() runs on
    per_task: dict[str, Tensor]        # unweighted task losses (sum of each head's terms)
    terms: dict[str, Tensor]           # every head term, keyed "task/term"


def static_weighting(task_terms: dict[str, dict[str, Tensor]], weights: dict[str, float]) -> CompoundLoss:
    """total = sum_t weight_t * loss_t, with loss_t the sum of head t's named terms."""
    per_task = {task: torch.stack(list(terms.values())).sum() for task, terms in task_terms.items()}
    total = torch.stack([weights[task] * loss for task, loss in per_task.items()]).sum()
    terms = {f"{task}/{name}": value for task, named in task_terms.items() for name, value in named.items()}
    return CompoundLoss(total=total, per_task=per_task, terms=terms)
