"""PSPNet (Zhao et al. 2017, "Pyramid Scene Parsing Network") over the backbone's deepest feature map.

The pyramid pooling module average-pools the deepest map to bins x bins cells (1, 2, 3, 6 in the paper),
reduces each pooled map to C/N channels with a 1x1 conv-BN-ReLU (N bins, so the pyramid adds as many
channels as the map has), upsamples each bilinearly back to the map's size and concatenates them with the
map itself: global context at several scales next to the local features. A 3x3 conv-BN-ReLU, dropout and
a 1x1 classifier follow; the logits are upsampled bilinearly to the image.

The paper's auxiliary loss: an FCN-style classifier on the second-deepest stage (ResNet's res4b22 in the
paper), weighted by `aux_weight` (0.4), in training only. It shapes the backbone's gradients and is
discarded at inference: in eval, forward returns the plain logits, so exported outputs do not see it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from datasets.sample import Batch
from heads.blocks import conv_bn_relu, upsample_to
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions


@dataclass
class PSPNetOptions(SegmentationLossOptions):  # the loss weights are flat keys of the head
    bins: list[int] = field(default_factory=lambda: [1, 2, 3, 6])  # pooled grid sizes of the pyramid
    channels: int = 512        # width of the 3x3 conv after the pyramid (the paper's 512)
    dropout: float = 0.1       # before the classifiers, as in the paper
    aux_weight: float = 0.4    # weight of the auxiliary loss on the second-deepest stage; 0 disables it


@dataclass
class PSPNetOutputs:
    """What forward returns in training when the auxiliary classifier is on."""
    logits: Tensor       # [B, K, H, W] main classifier
    aux_logits: Tensor   # [B, K, H, W] auxiliary classifier on the second-deepest stage


class PoolingBranch(nn.Module):
    """One pyramid level: average-pool to bins x bins, 1x1 conv-BN-ReLU, bilinear upsampling back."""

    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.reduce = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.reduce(self.pool(x)), x)


class PyramidPooling(nn.Module):
    """The map concatenated with every branch's output: in_channels + len(bins) * (in_channels // len(bins))."""

    def __init__(self, in_channels: int, bins: list[int]) -> None:
        super().__init__()
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"pspnet.bins: expected positive grid sizes, got {bins}")
        reduced = max(1, in_channels // len(bins))  # the paper's 1/N, so the context does not outweigh the map
        self.branches = nn.ModuleList(PoolingBranch(in_channels, reduced, b) for b in bins)
        self.out_channels = in_channels + len(bins) * reduced

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x] + [branch(x) for branch in self.branches], dim=1)


def classifier(in_channels: int, width: int, dropout: float, num_classes: int) -> nn.Sequential:
    """3x3 conv-BN-ReLU, dropout, 1x1 scores: the paper's final block, also used by the auxiliary branch."""
    return nn.Sequential(conv_bn_relu(in_channels, width, 3), nn.Dropout(dropout), nn.Conv2d(width, num_classes, 1))


class PSPNetHead(SegmentationHead):
    Options = PSPNetOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: PSPNetOptions,
                 image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        if options.aux_weight and len(channels) < 2:
            raise ValueError(f"pspnet.aux_weight: the auxiliary classifier needs a second-deepest stage; the backbone "
                             f"has strides {strides} (set aux_weight: 0)")
        self.options = options
        self.pyramid = PyramidPooling(channels[-1], options.bins)
        self.classifier = classifier(self.pyramid.out_channels, options.channels, options.dropout, self.num_classes)
        # Built last, so the main branch's initialisation is the same with or without it (same seed).
        self.aux = (classifier(channels[-2], max(1, options.channels // 2), options.dropout, self.num_classes)
                    if options.aux_weight else None)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor | PSPNetOutputs:
        """Logits [B, K, H, W]; in training with aux_weight > 0, PSPNetOutputs with the auxiliary logits too.
        Eval outputs stay a plain tensor, the format every segmentation consumer reads."""
        logits = upsample_to(self.classifier(self.pyramid(features[-1])), image)
        if not (self.training and self.aux is not None):
            return logits
        return PSPNetOutputs(logits, upsample_to(self.aux(features[-2]), image))

    def loss(self, outputs: Tensor | PSPNetOutputs, batch: Batch) -> dict[str, Tensor]:
        if not isinstance(outputs, PSPNetOutputs):
            return self.criterion(outputs, batch)
        terms = self.criterion(outputs.logits, batch)
        # One "aux" term: the auxiliary classifier's whole segmentation loss (same weights), scaled by aux_weight.
        aux_terms = self.criterion(outputs.aux_logits, batch)
        terms["aux"] = self.options.aux_weight * torch.stack(list(aux_terms.values())).sum()
        return terms

    def decode(self, outputs: Tensor | PSPNetOutputs) -> Tensor:
        return super().decode(main_logits(outputs))


def main_logits(outputs: Tensor | PSPNetOutputs) -> Tensor:
    """The main classifier's logits (the auxiliary ones serve training only)."""
    return outputs.logits if isinstance(outputs, PSPNetOutputs) else outputs
