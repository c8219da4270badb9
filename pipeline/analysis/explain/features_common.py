"""Small pieces the feature-space methods (activations, max_patches, embedding) share: which stages to show,
reading a split in batches, and drawing an image cell (with plots.picture, as the run figures do)."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from backbones.base import Backbone
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable
from pipeline.tracking.plots import picture

BATCH_SIZE = 32
DPI = 100
CELL_INCHES = 1.3


def chosen_stages(backbone: Backbone, stages: list[int] | None) -> list[int]:
    """`options.stages` checked against the backbone (negative indices count from the end); None: every stage."""
    count = len(backbone.stages)
    if stages is None:
        return list(range(count))
    bad = [s for s in stages if not -count <= s < count]
    if bad:
        raise NotApplicable(f"stages {bad} do not exist: the backbone has stages 0..{count - 1}")
    return sorted({s % count for s in stages})


def require_dataset(inputs: ExplainInputs, what: str) -> Dataset:
    """The split a method reads, or NotApplicable naming the option that provides it."""
    if inputs.dataset is None or len(inputs.dataset) == 0:
        raise NotApplicable(f"{what} needs a split of images to read; none was given (pass --data)")
    return inputs.dataset


def split_batches(dataset: Dataset, limit: int, device: torch.device,
                  batch_size: int = BATCH_SIZE) -> Iterator[tuple[Tensor, list[int | None]]]:
    """The first `limit` samples of `dataset` as ([B, C, H, W] images on `device`, their image-level labels).
    The first images, not a random draw, so a run reads the same images as the last one."""
    count = min(limit, len(dataset))
    for start in range(0, count, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
        yield torch.stack([s.image for s in samples]).to(device), [s.label for s in samples]


def show_image(axes, image: Tensor, title: str = "", **title_style) -> None:
    shown = picture(image)
    if shown.ndim == 2:  # grey on a fixed [0, 1] scale, not stretched to the image's own range
        axes.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(shown, interpolation="nearest")
    axes.set_title(title, fontsize="x-small", **title_style)
    axes.set_axis_off()


def class_name(class_names: list[str], label: int | None) -> str:
    if label is None:
        return "unlabelled"
    return class_names[label] if 0 <= label < len(class_names) else str(label)
