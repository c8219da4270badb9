"""Fixed weights: total = sum_t lambda_t L_t, with lambda_t each head's `weight`."""
from __future__ import annotations

from pipeline.weighting.base import Weighting


class Static(Weighting):
    """Everything it needs is the base class's default behaviour."""
