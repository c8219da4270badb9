"""Multi-task loss weighting: one strategy per file behind the Weighting contract (base.py), chosen by
name in `model.weighting` (registry.py). CompoundLoss/compound_loss: a micro-batch's per-task losses and terms."""
from pipeline.weighting.base import Weighting
from pipeline.weighting.compound import CompoundLoss, compound_loss
from pipeline.weighting.context import BackwardContext, backward_context, last_layer_parameters
from pipeline.weighting.registry import (STRATEGIES, WeightingConfig, build_weighting, parse_weighting,
                                         weighting_to_dict)

__all__ = ["STRATEGIES", "BackwardContext", "CompoundLoss", "Weighting", "WeightingConfig", "backward_context",
           "build_weighting", "compound_loss", "last_layer_parameters", "parse_weighting", "weighting_to_dict"]
