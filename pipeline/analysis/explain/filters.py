"""The first convolution's kernels drawn as small images (AlexNet's 96 11x11x3 filters): the only layer whose
weights live in pixel space, so the only one whose filters can be read directly."""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from pipeline.analysis.explain.features_common import DPI
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable, Picture

GAP = 1                 # background pixels between kernels in the mosaic
BACKGROUND = 1.0        # white, so the gaps never look like kernel values
KERNEL_INCHES = 0.5
MAX_WIDTH_INCHES = 8.0


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first nn.Conv2d in module order (the stem, for every backbone family here), with its path."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            return name, child
    raise NotApplicable(f"{type(module).__name__} has no nn.Conv2d, so there are no image-space filters to show")


def normalised_kernels(weight: Tensor) -> Tensor:
    """[O, I, kh, kw] -> the same in [0, 1], each kernel min-max scaled on its own (a flat kernel: 0.5). Own
    scaling, since kernels' magnitudes differ by orders and one shared scale would show most as flat grey."""
    flat = weight.detach().float().cpu().flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.full_like(flat, 0.5))
    return scaled.view_as(weight)


def kernel_cell(kernel: Tensor) -> np.ndarray:
    """One scaled [I, kh, kw] kernel -> its cell: RGB from the first three channels when I >= 3, else its
    channels side by side in grey (HxW)."""
    if kernel.shape[0] >= 3:
        return kernel[:3].permute(1, 2, 0).numpy()
    parts = [kernel[0].numpy()]
    for channel in kernel[1:]:
        parts += [np.full((kernel.shape[1], GAP), BACKGROUND, dtype=np.float32), channel.numpy()]
    return np.concatenate(parts, axis=1)


def filter_grid(weight: Tensor) -> tuple[np.ndarray, int, int]:
    """[O, I, kh, kw] weights -> (mosaic, rows, cols): one cell per kernel, row by row, GAP pixels apart, as near
    square as the kernel count allows. The mosaic is HxWx3 (I >= 3) or HxW grey."""
    cells = [kernel_cell(k) for k in normalised_kernels(weight)]
    cols = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    cell_h, cell_w = cells[0].shape[:2]
    shape = (rows * (cell_h + GAP) - GAP, cols * (cell_w + GAP) - GAP) + cells[0].shape[2:]
    mosaic = np.full(shape, BACKGROUND, dtype=np.float32)
    for i, cell in enumerate(cells):
        top, left = (i // cols) * (cell_h + GAP), (i % cols) * (cell_w + GAP)
        mosaic[top:top + cell_h, left:left + cell_w] = cell
    return mosaic, rows, cols


@torch.no_grad()
def first_layer_filters(inputs: ExplainInputs) -> list[Picture]:
    name, conv = first_conv(inputs.model.backbone)
    weight = conv.weight
    mosaic, rows, cols = filter_grid(weight)
    out_channels, in_channels, kh, kw = weight.shape
    width = min(MAX_WIDTH_INCHES, cols * KERNEL_INCHES * (1 if in_channels >= 3 else in_channels))
    height = width * mosaic.shape[0] / mosaic.shape[1] + 0.4   # room for the title
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(f"backbone.{name}: {out_channels} kernels {kh}x{kw}x{in_channels}", fontsize="small")
    if in_channels >= 3:
        shown = "as RGB" if in_channels == 3 else f"its first 3 of {in_channels} input channels as RGB"
    else:
        shown = f"its {in_channels} input channel(s) side by side in grey"
    caption = (f"The {out_channels} kernels of the first convolution (backbone.{name}, {kh}x{kw} over "
               f"{in_channels} input channels), each drawn {shown} and min-max scaled on its own, so only its "
               "pattern counts, not its magnitude. Trained stems show oriented edges, colour blobs and "
               "gratings; noise-like kernels mean the stem learned little (or is untrained).")
    return [Picture("Filters", "filters/first_layer.png", figure, caption)]
