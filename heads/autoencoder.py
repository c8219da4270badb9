"""Autoencoder: reconstruct the input image from one shared feature map only.

No skip connections: the chosen map (by default the deepest) is the
bottleneck, so the backbone has to encode the image, which is the point of
autoencoder pre-training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from datasets.sample import Batch
from heads.base import Head
from heads.reconstruction import ReconstructionMetric, bottleneck_level, build_decoder, match_size

__all__ = ["AutoencoderHead", "AutoencoderOptions", "ReconstructionMetric"]


@dataclass
class AutoencoderOptions:
    # Channels after each x2 upsampling step, from the bottleneck to full resolution.
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])
    # Stride of the backbone map that is the bottleneck; null = the deepest one.
    bottleneck_stride: int | None = None


class AutoencoderHead(Head):
    kind = "reconstruction"
    output_name = "image"
    Options = AutoencoderOptions
    option_prefix = "ae"  # how error messages name this head's options

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: AutoencoderOptions,
                 image_channels: int = 3) -> None:
        super().__init__()
        self.options = options
        self.level = bottleneck_level(options.bottleneck_stride, strides, options.decoder_channels, self.option_prefix)
        self.decoder = build_decoder(channels[self.level], options.decoder_channels, image_channels)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        return match_size(self.decoder(features[self.level]), image)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        # The target is the clean input, which every batch has: no missing-target case.
        return {"mse": F.mse_loss(outputs, batch.image)}

    def decode(self, outputs: Tensor) -> Tensor:
        """Reconstructed images [B, C, H, W] in [0, 1], C the input images' channels."""
        return outputs

    def metric(self) -> ReconstructionMetric:
        return ReconstructionMetric()
