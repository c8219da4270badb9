"""Deeper layers' filters seen through the input they respond to most: gradient ascent on a channel's mean
activation, for the most active channels of each shown stage."""
from __future__ import annotations

import torch

from pipeline.analysis.explain.ascent import AscentOptions, channel_images
from pipeline.analysis.explain.drawing import Cell, grid
from pipeline.analysis.explain.inputs import ExplainInputs, Picture

CHANNELS_SHOWN = 4      # per stage: each is a separate optimisation, and 4 already show what a stage looks for
DEFAULT_STAGES = 3


@torch.no_grad()
def most_active_channels(inputs: ExplainInputs, stage: int, count: int) -> list[int]:
    """The channels of `stage` with the highest mean activation on the query images (dead ones never lead)."""
    activation = inputs.model.backbone(inputs.images)[stage].mean(dim=(0, 2, 3))
    return activation.argsort(descending=True)[:count].tolist()


def channel_visualisation(inputs: ExplainInputs) -> list[Picture]:
    # The deepest stages by default: the first layers are seen directly (filters) and each unit costs an ascent.
    stages = inputs.options.stages or list(range(len(inputs.model.backbone.stages)))[-DEFAULT_STAGES:]
    count = min(inputs.options.channels, CHANNELS_SHOWN)
    units = [(stage, channel) for stage in stages for channel in most_active_channels(inputs, stage, count)]
    options = AscentOptions(steps=inputs.options.ascent_steps, seed=inputs.options.seed)
    images = channel_images(inputs.model, units, tuple(inputs.images.shape[-2:]), options)
    rows = [[Cell(images[i], title=f"stage {stage} ch {channel}") for i, (stage, channel) in enumerate(units)
             if stage == row_stage] for row_stage in stages]
    caption = (f"The input each of the {count} most active channels of backbone stages {stages} responds to most: "
               f"gradient ascent on the channel's mean activation from grey ({options.steps} steps, L2, jitter, "
               "blur, as for class visualisation).")
    return [Picture("Filters", "filters/channel_visualisation.png", grid(rows), caption)]
