"""Maximally activating patches: for a stage's livest channels, the input patches of the split that drive each
channel hardest, cropped to the unit's theoretical receptive field. The way to see what deeper layers' filters
detect, since their weights, unlike the first layer's, are not in pixel space."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from backbones.base import Backbone
from pipeline.analysis.explain.features_common import (CELL_INCHES, DPI, chosen_stages, require_dataset,
                                                       show_image, split_batches)
from pipeline.analysis.explain.inputs import ExplainInputs, Picture
from pipeline.analysis.receptive_field import ReceptiveField, measure

FILL = 0.5              # grey outside the image, so a patch at the border keeps its size and its unit centred


@dataclass
class Unit:
    value: float        # the channel's activation at (y, x)
    image: int          # index of the image in the split
    y: int              # position in the stage's feature map
    x: int


@dataclass
class StageMaxima:
    values: Tensor      # [N, C]: each image's maximum of each channel
    positions: Tensor   # [N, C]: where (flat index y * width + x)
    size: tuple[int, int]   # (height, width) of the stage's feature map

    def stride(self, image_size: tuple[int, int]) -> tuple[float, float]:
        return image_size[0] / self.size[0], image_size[1] / self.size[1]


@torch.no_grad()
def split_maxima(backbone: Backbone, dataset, stages: list[int], limit: int, device) -> dict[int, StageMaxima]:
    """Run the backbone over the first `limit` images of `dataset` and keep, per image and channel, only the
    spatial maximum and its place: one unit per image, so a channel's top units come from distinct images."""
    values: dict[int, list[Tensor]] = {s: [] for s in stages}
    positions: dict[int, list[Tensor]] = {s: [] for s in stages}
    sizes: dict[int, tuple[int, int]] = {}
    for images, _ in split_batches(dataset, limit, device):
        features = backbone(images)
        for stage in stages:
            best = features[stage].flatten(2).max(dim=2)
            values[stage].append(best.values.float().cpu())
            positions[stage].append(best.indices.cpu())
            sizes[stage] = tuple(features[stage].shape[-2:])
    return {s: StageMaxima(torch.cat(values[s]), torch.cat(positions[s]), sizes[s]) for s in stages}


def top_units(maxima: StageMaxima, channels: int, top_k: int) -> dict[int, list[Unit]]:
    """The `channels` channels of highest maximum over the split (dead ones never win), strongest first, each
    with its `top_k` strongest units (one per image), strongest first."""
    peaks = maxima.values.max(dim=0).values
    chosen = peaks.argsort(descending=True)[:channels].tolist()
    result = {}
    for channel in chosen:
        column = maxima.values[:, channel]
        order = column.argsort(descending=True)[:top_k].tolist()
        result[channel] = [Unit(float(column[i]), i, *divmod(int(maxima.positions[i, channel]), maxima.size[1]))
                           for i in order]
    return result


def unit_centre(y: int, x: int, stride: tuple[float, float]) -> tuple[float, float]:
    """The input point (continuous pixel coordinates, pixel i spans [i, i + 1)) a unit is centred on: the middle
    of the stride-sized cell it stands for. Exact for 'same'-padded chains of stride-s convs and s x s pools; for
    ResNet-style k3/s2/p1 pools it is up to half a stride off, small next to the receptive field."""
    return (y + 0.5) * stride[0], (x + 0.5) * stride[1]


def crop_patch(image: Tensor, centre: tuple[float, float], size: tuple[int, int]) -> Tensor:
    """The [C, rows, cols] window of `image` [C, H, W] centred on `centre` (continuous coordinates), FILL grey
    where it leaves the image. The window holds the pixels whose centres fall inside it."""
    rows, cols = size
    top = _first_inside(centre[0], rows)
    left = _first_inside(centre[1], cols)
    patch = torch.full((image.shape[0], rows, cols), FILL, dtype=image.dtype)
    height, width = image.shape[-2:]
    y0, y1 = max(top, 0), min(top + rows, height)
    x0, x1 = max(left, 0), min(left + cols, width)
    if y0 < y1 and x0 < x1:
        patch[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    return patch


def _first_inside(centre: float, side: int) -> int:
    """First pixel index i with i + 0.5 >= centre - side / 2."""
    return math.ceil(centre - side / 2 - 0.5)


def _pair_text(pair: tuple[float, float]) -> str:
    first, second = (f"{v:.3g}" for v in pair)
    return first if first == second else f"{first}x{second}"


def stage_fields(backbone: Backbone, image_shape: tuple[int, int, int], stages: list[int]) -> dict[int, ReceptiveField]:
    """Each stage's theoretical receptive field and stride at this input size. A stage the measurement leaves out
    (its output does not depend on the input) gets the whole image, flagged clipped."""
    # measure feeds a CPU image to a copy of what it is given, so give it a CPU copy.
    on_cpu = all(p.device.type == "cpu" for p in backbone.parameters())
    probe = backbone if on_cpu else copy.deepcopy(backbone).cpu()
    fields = measure(probe, image_shape, [f"stages.{s}" for s in stages])
    whole = ReceptiveField(tuple(image_shape[-2:]), True, None)
    return {s: fields.get(f"stages.{s}", whole) for s in stages}


def patch_figure(dataset, units: dict[int, list[Unit]], field: ReceptiveField, stride: tuple[float, float],
                 stage: int, top_k: int) -> Figure:
    """Rows = channels, columns = their top patches, strongest left."""
    figure = Figure(figsize=(CELL_INCHES * top_k, CELL_INCHES * len(units) + 0.3), dpi=DPI, layout="constrained")
    figure.suptitle(f"stage {stage}: patches of {field.size_text()} px (receptive field)", fontsize="small")
    grid = figure.subplots(len(units), top_k, squeeze=False)
    for row, (channel, row_units) in zip(grid, units.items()):
        for column, axes in enumerate(row):
            if column >= len(row_units):
                axes.set_axis_off()
                continue
            unit = row_units[column]
            patch = crop_patch(dataset[unit.image].image, unit_centre(unit.y, unit.x, stride), field.size)
            prefix = f"ch {channel}\n" if column == 0 else ""
            show_image(axes, patch, f"{prefix}#{unit.image}  {unit.value:.2g}")
    return figure


def max_activating_patches(inputs: ExplainInputs) -> list[Picture]:
    dataset = require_dataset(inputs, "maximally activating patches")
    options = inputs.options
    backbone = inputs.model.backbone
    stages = chosen_stages(backbone, options.stages)
    image_shape = tuple(dataset[0].image.shape)
    fields = stage_fields(backbone, image_shape, stages)
    maxima = split_maxima(backbone, dataset, stages, options.split_limit, inputs.device)
    read = min(options.split_limit, len(dataset))
    pictures = []
    for stage in stages:
        units = top_units(maxima[stage], options.channels, options.top_k)
        field = fields[stage]
        stride = maxima[stage].stride(image_shape[-2:])
        figure = patch_figure(dataset, units, field, stride, stage, options.top_k)
        clipped = (" The field reaches past the image border at this input size (clipped: at least this big), so "
                   "these patches show most of the image, not a part of it." if field.clipped else "")
        caption = (f"Backbone stage {stage}: the {len(units)} channels with the highest peak activation over "
                   f"{read} images of the {inputs.split_name or 'split'}, one per row, each with the input patches "
                   f"that excite it most (one per image, strongest left; title: image index, activation). "
                   f"Patch = the unit's theoretical receptive field, {field.size_text()} px, centred on the unit "
                   f"(stride {_pair_text(stride)}); grey = outside the image.{clipped}")
        pictures.append(Picture("Maximally activating patches", f"patches/stage{stage}.png", figure, caption))
    return pictures
