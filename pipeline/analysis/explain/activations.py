"""Activation maps: what each backbone stage's strongest channels respond to in the images being explained."""
from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import Tensor

from pipeline.analysis.explain.features_common import CELL_INCHES, DPI, chosen_stages, show_image
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable, Picture

MAX_IMAGES = 6          # rows per figure: more makes an unreadable page, not a better one
CMAP = "viridis"


def strongest_channels(features: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """[C, h, w] one image's feature map -> (indices, means) of its `count` channels of highest mean
    activation, strongest first."""
    means = features.flatten(1).mean(dim=1)
    order = means.argsort(descending=True)[:count]
    return order, means[order]


def stage_figure(images: Tensor, names: list[str], features: Tensor, channels: int, stage: int) -> Figure:
    """Rows = images; columns = the image, then its strongest channels as heat maps on one colour scale per
    row, so the columns compare."""
    count = min(channels, features.shape[1])
    figure = Figure(figsize=(CELL_INCHES * (1 + count), CELL_INCHES * len(images) + 0.3), dpi=DPI,
                    layout="constrained")
    figure.suptitle(f"stage {stage}: {features.shape[1]} channels of {features.shape[2]}x{features.shape[3]}",
                    fontsize="small")
    grid = figure.subplots(len(images), 1 + count, squeeze=False)
    for row, image, name, maps in zip(grid, images, names, features):
        show_image(row[0], image, name)
        order, means = strongest_channels(maps, count)
        shown = maps[order].float().cpu()
        low, high = float(shown.min()), float(shown.max())
        for axes, channel, mean, heat in zip(row[1:], order.tolist(), means.tolist(), shown):
            axes.imshow(heat.numpy(), cmap=CMAP, vmin=low, vmax=high if high > low else low + 1,
                        interpolation="nearest")
            axes.set_title(f"ch {channel}  mean {mean:.2g}", fontsize="x-small")
            axes.set_axis_off()
    return figure


@torch.no_grad()
def activation_maps(inputs: ExplainInputs) -> list[Picture]:
    if len(inputs.images) == 0:
        raise NotApplicable("no images to explain")
    backbone = inputs.model.backbone
    stages = chosen_stages(backbone, inputs.options.stages)
    images, names = inputs.images[:MAX_IMAGES], inputs.names[:MAX_IMAGES]
    features = backbone(images)
    pictures = []
    for stage in stages:
        maps = features[stage]
        figure = stage_figure(images, names, maps, inputs.options.channels, stage)
        stride = images.shape[-1] / maps.shape[-1]
        caption = (f"Backbone stage {stage} (stride {stride:.3g}, {maps.shape[1]} channels): per image, the "
                   f"{min(inputs.options.channels, maps.shape[1])} channels of highest mean activation, each a "
                   "heat map over the image (one colour scale per row; yellow = strongest). Early stages respond "
                   "to edges and colours where they are; late ones to whole parts, coarsely placed.")
        pictures.append(Picture("Activations", f"activations/stage{stage}.png", figure, caption))
    return pictures
