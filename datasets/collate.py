"""Stack `Sample`s into a `Batch`, marking every missing target explicitly."""
from __future__ import annotations

import torch
from torch import Tensor

from datasets.sample import IGNORE_INDEX, Batch, Sample


def collate(samples: list[Sample]) -> Batch:
    if not samples:
        raise ValueError("collate: expected at least one sample, got an empty list")
    images = _stack_images(samples)
    height, width = images.shape[-2:]
    return Batch(
        image=images,
        image_id=torch.tensor([s.image_id for s in samples], dtype=torch.int64),
        orig_size=torch.tensor([list(s.orig_size) for s in samples], dtype=torch.int64),
        label=torch.tensor([s.label if s.label is not None else 0 for s in samples], dtype=torch.int64),
        has_label=torch.tensor([s.label is not None for s in samples]),
        mask=torch.stack([_mask_or_ignore(s.mask, height, width) for s in samples]),
        has_mask=torch.tensor([s.mask is not None for s in samples]),
        boxes=[s.boxes if s.boxes is not None else torch.zeros(0, 4) for s in samples],
        box_labels=[s.box_labels if s.box_labels is not None else torch.zeros(0, dtype=torch.int64) for s in samples],
        # An empty box tensor with has_boxes True means "no objects"; with False, "not annotated".
        has_boxes=torch.tensor([s.boxes is not None for s in samples]),
        multi_label=_multi_hot_or_zeros(samples),
        has_multi_label=torch.tensor([s.multi_label is not None for s in samples]),
        ignore_boxes=[s.ignore_boxes if s.ignore_boxes is not None else torch.zeros(0, 4) for s in samples],
        ignore_labels=[s.ignore_labels if s.ignore_labels is not None else torch.zeros(0, dtype=torch.int64)
                       for s in samples],
        to_original=torch.tensor([list(s.to_original) for s in samples], dtype=torch.float32),
        soft_label=_soft_labels(samples),
    )


def _stack_images(samples: list[Sample]) -> Tensor:
    sizes = {tuple(s.image.shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"collate: expected images of one shape (resize in the transform), got {sorted(sizes)}")
    return torch.stack([s.image for s in samples])


def _mask_or_ignore(mask: Tensor | None, height: int, width: int) -> Tensor:
    if mask is None:
        return torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
    return mask.long()


def _multi_hot_or_zeros(samples: list[Sample]) -> Tensor:
    """[B, C] multi-hot; rows of samples without one are zero (has_multi_label tells them apart from "none")."""
    widths = {s.multi_label.shape[0] for s in samples if s.multi_label is not None}
    if len(widths) > 1:
        raise ValueError(f"collate: expected multi-labels of one class count, got {sorted(widths)}")
    width = widths.pop() if widths else 0
    return torch.stack([s.multi_label.float() if s.multi_label is not None else torch.zeros(width)
                        for s in samples])


def _soft_labels(samples: list[Sample]) -> Tensor:
    """[B, C] when a sample is mixed (MixUp / CutMix): its soft label, the others' one-hot label (zeros when
    unlabelled, which has_label tells); [B, 0] otherwise."""
    widths = {s.soft_label.shape[0] for s in samples if s.soft_label is not None}
    if len(widths) > 1:
        raise ValueError(f"collate: expected soft labels of one class count, got {sorted(widths)}")
    if not widths:
        return torch.zeros(len(samples), 0)
    width = widths.pop()
    rows = []
    for s in samples:
        if s.soft_label is not None:
            rows.append(s.soft_label.float())
        elif s.label is not None:
            rows.append(torch.nn.functional.one_hot(torch.tensor(s.label), width).float())
        else:
            rows.append(torch.zeros(width))
    return torch.stack(rows)
