"""MixUp and CutMix for classification: a sample blended with (MixUp) or pasted into (CutMix) a partner drawn
from the same split, with the soft label [C] that says how much of each class the picture holds.

torchvision.transforms.v2's MixUp / CutMix do the mixing, on a batch of two (the sample, its partner).
They work per batch in torchvision; here the partner is drawn per sample by `SampleTransform.draw_partners`
from the sample's own seed, so a sample's augmentation stays a pure function of (seed, epoch, index) for any
worker count and after a resume (datasets/sampling.py), and the collate function stays a plain stack.
torchvision draws from torch's global generator: the draw runs under `fork_rng` with the sample's seed.
"""
from __future__ import annotations

import dataclasses

import torch
from torchvision.transforms import v2

from datasets.augment_config import MixArgs
from datasets.sample import Sample


def mix_samples(sample: Sample, partner: Sample, args: MixArgs, num_classes: int, seed: int) -> Sample:
    """`sample` mixed with `partner`: image and `soft_label`; its hard `label` stays (metrics read it). A sample
    or partner without a label is left unmixed: its share of the picture would have no class."""
    if sample.label is None or partner.label is None:
        return sample
    if num_classes < 1:
        raise ValueError(f"{args.kind}: the split's class count is needed for soft labels, got {num_classes}")
    mixer = v2.MixUp(alpha=args.alpha, num_classes=num_classes) if args.kind == "MixUp" else \
        v2.CutMix(alpha=args.alpha, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images, soft = mixer(torch.stack([sample.image, partner.image]),
                             torch.tensor([sample.label, partner.label], dtype=torch.int64))
    return dataclasses.replace(sample, image=images[0].contiguous(), soft_label=soft[0].float())
