"""The backbone contract: a chain of stages, each ending at a new stride.

`forward(x)` takes images in [0, 1], applies the normalisation the weights
were trained with, and returns one feature map per stage. Heads only rely
on `channels` and `strides`; the trainer uses `stages` for freezing.

Families are built for RGB; `backbones.build(..., in_channels=C)` adapts the
first convolution and the normalisation to C channels afterwards (see
backbones/input_channels.py), so `mean` / `std` have C entries.

Opt-in: `record_pool_indices()` makes forward also return the max-pool
indices of that call (for unpooling decoders); see backbones/pool_indices.py.

`classifier_fc`: a family whose classifier has hidden fully connected layers
that a head can recast as convolutions (VGG's fc6/fc7, for FCN) offers their
tensors here until the model is built (heads/base.py `adopt_backbone`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbones.pool_indices import IndexedMaxPool2d, PooledFeatures, PoolRecord, swap_max_pools


@dataclass(frozen=True)
class ClassifierFC:
    """The hidden fully connected layers that follow a family's last stage in its classifier (VGG: fc6, fc7),
    as trained, or the library's random init when the backbone is not pretrained. `layers`: (weight [out, in],
    bias [out]) each; the first reads the last stage's map pooled to `grid` (H, W), flattened channel-major."""
    layers: tuple[tuple[Tensor, Tensor], ...]
    grid: tuple[int, int]


class Backbone(nn.Module):
    def __init__(
        self,
        stages: list[nn.Module],
        channels: list[int],
        strides: list[int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        if not (len(stages) == len(channels) == len(strides)):
            raise ValueError("stages, channels and strides must have one entry per stage")
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        # Buffers, so the normalisation travels with the weights in checkpoints and exports.
        # One entry per input channel: [1, C, 1, 1].
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one entry per input channel, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._indexed_pools: list[IndexedMaxPool2d] = []  # filled by record_pool_indices()
        # A plain attribute: not a parameter, not in the state dict, unseen by DDP. Set by the families that have
        # such layers (backbones/vgg.py); build_model drops it once the heads have adopted it.
        self.classifier_fc: ClassifierFC | None = None

    @property
    def in_channels(self) -> int:
        """Image channels the backbone takes (3 unless adapted)."""
        return self.mean.shape[1]

    def forward(self, image: Tensor) -> list[Tensor]:
        if not self._indexed_pools:
            return self._features(image)
        records: list[PoolRecord] = []
        for pool in self._indexed_pools:  # a sink for this call only, so nothing outlives it
            pool.sink = records
        try:
            return PooledFeatures(self._features(image), records)
        finally:
            for pool in self._indexed_pools:
                pool.sink = None

    def record_pool_indices(self) -> int:
        """From now on forward returns PooledFeatures carrying every max-pool's indices; returns the pool count.

        The outputs stay the same. Raises ValueError when the stages contain no nn.MaxPool2d.
        """
        pools = swap_max_pools(self.stages)
        if not pools:
            raise ValueError(f"{type(self).__name__} with strides {self.strides} has no nn.MaxPool2d in its "
                             "stages, so there are no max-pool indices to record (use a VGG or ResNet backbone)")
        self._indexed_pools = pools
        return len(pools)

    def _features(self, image: Tensor) -> list[Tensor]:
        x = (image - self.mean) / self.std
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
