"""Multi-task loss weighting: one strategy per file behind the Weighting contract (base.py), chosen by
name in `model.weighting` (registry.py). CompoundLoss/static_weighting: the trainer's fixed sum so far."""
from pipeline.weighting.base import Weighting
from pipeline.weighting.compound import CompoundLoss, static_weighting
from pipeline.weighting.context import BackwardContext, backward_context, last_layer_parameters
from pipeline.weighting.registry import (STRATEGIES, WeightingConfig, build_weighting, parse_weighting,
                                         weighting_to_dict)

__all__ = ["STRATEGIES", "BackwardContext", "CompoundLoss", "Weighting", "WeightingConfig", "backward_context",
           "build_weighting", "last_layer_parameters", "parse_weighting", "static_weighting", "weighting_to_dict"]
