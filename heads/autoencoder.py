"""Autoencoder: reconstruct the input image from one shared feature map only.

No skip connections: the chosen map (by default the deepest) is the
bottleneck, so the backbone has to encode the image, which is the point of
autoencoder pre-training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from datasets.sample import Batch
from heads.base import Head
from heads.blocks import conv_bn_relu


@dataclass
class AutoencoderOptions:
    # Channels after each x2 upsampling step, from the bottleneck to full resolution.
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])
    # Stride of the backbone map that is the bottleneck; null = the deepest one.
    bottleneck_stride: int | None = None


class AutoencoderHead(Head):
    kind = "reconstruction"
    Options = AutoencoderOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: AutoencoderOptions) -> None:
        super().__init__()
        stride = options.bottleneck_stride or strides[-1]
        if stride not in strides:
            raise ValueError(f"autoencoder.bottleneck_stride: expected one of the backbone's strides {strides}, "
                             f"got {stride}")
        self.level = strides.index(stride)
        steps = stride.bit_length() - 1
        if 2 ** steps != stride or len(options.decoder_channels) != steps:
            raise ValueError(f"autoencoder.decoder_channels: expected {steps} entries (one per x2 step up from "
                             f"stride {stride}), got {len(options.decoder_channels)}")
        layers: list[nn.Module] = []
        in_channels = channels[self.level]
        for out_channels in options.decoder_channels:
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       conv_bn_relu(in_channels, out_channels)]
            in_channels = out_channels
        layers += [nn.Conv2d(in_channels, 3, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        out = self.decoder(features[self.level])
        if out.shape[-2:] != image.shape[-2:]:  # unpadded backbones (AlexNet) lose a cell per stage
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"mse": F.mse_loss(outputs, batch.image)}

    def decode(self, outputs: Tensor) -> Tensor:
        """Reconstructed images [B, 3, H, W] in [0, 1]."""
        return outputs

    def metric(self) -> "ReconstructionMetric":
        return ReconstructionMetric()


class ReconstructionMetric:
    def __init__(self) -> None:
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.squared_error = 0.0
        self.count = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        preds, target = predictions.detach().cpu().float(), batch.image.cpu()
        self.psnr.update(preds, target)
        self.squared_error += float(((preds - target) ** 2).sum())
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"psnr": float(self.psnr.compute()), "mse": self.squared_error / self.count}
