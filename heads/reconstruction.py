"""What the reconstruction heads (ae, dae, vae) share: the bottleneck choice, the decoder and the metric.

The decoder has no skip connections: it sees one backbone map only, so the
backbone (or the latent) has to carry the whole image.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from datasets.sample import Batch
from heads.blocks import conv_bn_relu, upsample_to


def bottleneck_level(stride: int | None, strides: list[int], decoder_channels: list[int], head: str) -> int:
    """Index of the backbone map at `stride` (None: the deepest), checked against one decoder step per x2."""
    stride = stride or strides[-1]
    if stride not in strides:
        raise ValueError(f"{head}.bottleneck_stride: expected one of the backbone's strides {strides}, got {stride}")
    steps = stride.bit_length() - 1
    if 2 ** steps != stride or len(decoder_channels) != steps:
        raise ValueError(f"{head}.decoder_channels: expected {steps} entries (one per x2 step up from "
                         f"stride {stride}), got {len(decoder_channels)}")
    return strides.index(stride)


def build_decoder(in_channels: int, decoder_channels: list[int], image_channels: int = 3) -> nn.Sequential:
    """x2 upsample + conv-BN-ReLU per entry of `decoder_channels`, then an image of `image_channels` channels
    in [0, 1]."""
    layers: list[nn.Module] = []
    for out_channels in decoder_channels:
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                   conv_bn_relu(in_channels, out_channels)]
        in_channels = out_channels
    layers += [nn.Conv2d(in_channels, image_channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


def match_size(out: Tensor, image: Tensor) -> Tensor:
    """Unpadded backbones (AlexNet) lose a cell per stage and odd sizes round up: resize to the input."""
    return out if out.shape[-2:] == image.shape[-2:] else upsample_to(out, image)


class ReconstructionMetric:
    """MSE, PSNR and SSIM of the predicted images against the (clean) input images, all with data range 1."""

    def __init__(self) -> None:
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False)
        self.squared_error = 0.0
        self.count = 0

    def update(self, predictions: Tensor, batch: Batch) -> None:
        preds, target = predictions.detach().cpu().float(), batch.image.cpu().float()
        self.psnr.update(preds, target)
        self.ssim.update(preds, target)
        self.squared_error += float(((preds - target) ** 2).sum())
        self.count += target.numel()

    def merge(self, other: ReconstructionMetric) -> None:
        """Ranks merge explicitly (the torchmetrics parts do not sync on their own)."""
        self.psnr.merge_state(other.psnr)
        self.ssim.merge_state(other.ssim)
        self.squared_error += other.squared_error
        self.count += other.count

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"psnr": float(self.psnr.compute()), "mse": self.squared_error / self.count,
                "ssim": float(self.ssim.compute())}
