"""The backbone contract: a chain of stages, each ending at a new stride.

`forward(x)` takes images in [0, 1], applies the normalisation the weights
were trained with, and returns one feature map per stage. Heads only rely
on `channels` and `strides`; the trainer uses `stages` for freezing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    def __init__(
        self,
        stages: list[nn.Module],
        channels: list[int],
        strides: list[int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        if not (len(stages) == len(channels) == len(strides)):
            raise ValueError("stages, channels and strides must have one entry per stage")
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        # Buffers, so the normalisation travels with the weights in checkpoints and exports.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = (image - self.mean) / self.std
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
