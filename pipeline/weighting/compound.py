"""One micro-batch's losses as the heads computed them: what a weighting strategy combines, and what is logged.

The weighted total is not here: the strategy's `backward` forms it (and returns it, detached, for the logs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CompoundLoss:
    per_task: dict[str, Tensor]        # unweighted task losses (sum of each head's terms)
    terms: dict[str, Tensor]           # every head term, keyed "task/term"


def compound_loss(task_terms: dict[str, dict[str, Tensor]]) -> CompoundLoss:
    """loss_t = the sum of head t's named terms, and the terms themselves."""
    per_task = {task: torch.stack(list(terms.values())).sum() for task, terms in task_terms.items()}
    terms = {f"{task}/{name}": value for task, named in task_terms.items() for name, value in named.items()}
    return CompoundLoss(per_task=per_task, terms=terms)
