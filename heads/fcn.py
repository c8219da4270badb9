"""Fully convolutional network (Long et al. 2015): FCN-32s, -16s and -8s over the backbone's deepest maps.

The paper turns VGG's fc6/fc7 into convolutions; our backbones end before any classifier, so by default a
small 3x3 + 1x1 conv-BN-ReLU block (`fc_channels` wide; 0 = none) stands in for them on the stride-32 map.
A 1x1 conv scores it per class; FCN-16s / -8s upsample the scores x2 with a learned ConvTranspose2d and
add 1x1 scores of the stride-16 (then stride-8) backbone map, the paper's pool4 / pool3 skips, whose
score layers start at zero as in the paper (training starts from the coarser net). A last learned
ConvTranspose2d upsamples x32 / x16 / x8 to the input. Every transposed conv starts as exact bilinear
interpolation (align_corners=False geometry: kernel 2f, stride f, padding f/2).

`fc_as_conv: true` is the paper's fc6/fc7 instead of that block (VGG backbones only): fc6 a 7x7 conv
512 -> 4096, fc7 a 1x1 conv 4096 -> 4096, each followed by ReLU and dropout 0.5 as in VGG's classifier,
starting from that classifier's Linear weights reshaped (backbone.classifier_fc: ImageNet-trained when the
backbone is pretrained, torchvision's random init otherwise). Where fc6's 7x7 window lies inside the map,
fc6+fc7 compute exactly what the classifier computes on that window flattened. One departure: the paper
pads conv1_1 by 100 and runs fc6 unpadded ('valid') on pool5, cropping the output back to the image at the
end; we pad fc6 by 3 ('same') and leave the backbone alone, because the backbone is shared by every head
of the model, whose maps must keep their usual sizes and alignment. So windows reaching past the map's
border see zeros there; on maps under 7x7 (images under 224 px) every window does.

Sizes that are not multiples of the stride: as in the paper, the upsampled map is cropped to the map it
is added to (bottom/right: the padding above aligns the top-left pixel centres); at the end, a map smaller
than the input (unpadded backbones such as AlexNet lose cells) is resized bilinearly instead.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.base import Backbone
from heads.blocks import conv_bn_relu
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions

SKIPS = {"32s": 0, "16s": 1, "8s": 2}  # how many shallower maps (stride /2, /4 of the deepest) are fused
VGG_FC = (512, 4096, 7)  # fc6/fc7 as the paper's VGG-16 has them: pool5 channels, width, fc6's window side


@dataclass
class FCNOptions(SegmentationLossOptions):  # the loss weights are flat keys of the head
    variant: Literal["32s", "16s", "8s"] = "8s"
    fc_channels: int = 256  # width of the conv block standing in for fc6/fc7; 0 scores the deepest map directly
    fc_as_conv: bool = False  # VGG's own fc6/fc7 as convolutions (the paper; replaces the fc_channels block)


def bilinear_kernel(size: int) -> Tensor:
    """The 2-D bilinear interpolation kernel of `size` x `size` (the FCN reference `upsample_filt`)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable x`factor` upsampling of each channel on its own, initialised to bilinear interpolation."""
    if factor < 2 or factor % 2:
        raise ValueError(f"fcn: upsampling factor must be even, got {factor}")
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        for c in range(channels):
            up.weight[c, c] = bilinear_kernel(2 * factor)
    return up


def crop_or_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop `x`'s bottom/right excess to `size`; resize bilinearly if it is smaller on any side."""
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[..., : size[0], : size[1]]


class FCNHead(SegmentationHead):
    Options = FCNOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: FCNOptions, image_channels: int = 3) -> None:
        super().__init__(num_classes, options)
        self.options = options
        self.levels = self._fused_levels(strides, SKIPS[options.variant])  # deepest first
        deep = channels[-1]
        if options.fc_as_conv:
            self.fc, fc_out = vgg_fc_convs(deep), VGG_FC[1]
        elif options.fc_channels:
            width = fc_out = options.fc_channels
            self.fc = nn.Sequential(conv_bn_relu(deep, width, 3), conv_bn_relu(width, width, 1))
        else:
            self.fc, fc_out = nn.Identity(), deep
        self.score = nn.ModuleList([nn.Conv2d(fc_out, self.num_classes, 1)])
        for level in self.levels[1:]:
            skip_score = nn.Conv2d(channels[level], self.num_classes, 1)
            nn.init.zeros_(skip_score.weight)
            nn.init.zeros_(skip_score.bias)
            self.score.append(skip_score)
        self.up2 = nn.ModuleList(bilinear_upsampler(self.num_classes, 2) for _ in self.levels[1:])
        self.final_up = bilinear_upsampler(self.num_classes, strides[self.levels[-1]])

    @staticmethod
    def _fused_levels(strides: list[int], skips: int) -> list[int]:
        """Indices of the feature maps used, deepest first; each next one must be at half the stride."""
        levels = [len(strides) - 1]
        for _ in range(skips):
            wanted = strides[levels[-1]] // 2
            if wanted not in strides:
                raise ValueError(f"fcn: this variant needs a feature map at stride {wanted}; backbone strides {strides}")
            levels.append(strides.index(wanted))
        return levels

    def adopt_backbone(self, backbone: Backbone) -> None:
        """fc_as_conv: start fc6/fc7 from the VGG classifier the backbone offers."""
        if self.options.fc_as_conv:
            load_vgg_fc(self.fc, backbone)

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        scores = self.score[0](self.fc(features[self.levels[0]]))
        for up, score, level in zip(self.up2, self.score[1:], self.levels[1:]):
            skip = features[level]
            scores = crop_or_resize(up(scores), skip.shape[-2:]) + score(skip)
        return crop_or_resize(self.final_up(scores), image.shape[-2:])


def vgg_fc_convs(in_channels: int) -> nn.Sequential:
    """fc6 (7x7, 'same' padding) and fc7 (1x1) as convolutions, each followed by ReLU and dropout as in VGG."""
    _, width, side = VGG_FC
    return nn.Sequential(OrderedDict(
        fc6=nn.Conv2d(in_channels, width, side, padding=side // 2), relu6=nn.ReLU(inplace=True),
        drop6=nn.Dropout(0.5),
        fc7=nn.Conv2d(width, width, 1), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(0.5),
    ))


def load_vgg_fc(fc: nn.Sequential, backbone: Backbone) -> None:
    """Copy the backbone's classifier fc6/fc7 (Linear [out, C*H*W], channel-major as VGG flattens pool5) into the
    convolutions: a Linear weight viewed as [out, C, H, W] is that conv's kernel."""
    channels, width, side = VGG_FC
    offered = backbone.classifier_fc
    if offered is None:
        raise ValueError(f"fc_as_conv: true recasts a VGG classifier's fc6/fc7 as convolutions, so it needs a "
                         f"VGG backbone (vgg11, vgg13, vgg16, vgg19, each also _bn: deepest map of {channels} "
                         f"channels, classifier included); this backbone (channels {backbone.channels}) has no such "
                         f"classifier. Use a VGG backbone, or fc_as_conv: false (the fc_channels block)")
    convs = [fc.fc6, fc.fc7]
    wanted = [(conv.out_channels, conv.weight[0].numel()) for conv in convs]  # a Linear's [out, in] per conv
    found = [tuple(weight.shape) for weight, _ in offered.layers]
    if backbone.channels[-1] != channels or tuple(offered.grid) != (side, side) or found != wanted:
        raise ValueError(f"fc_as_conv: true needs a VGG backbone: a deepest map of {channels} channels and a "
                         f"classifier whose fc6 reads it pooled to {side}x{side}, Linear weights {wanted}; this "
                         f"backbone has channels {backbone.channels}, grid {offered.grid}, weights {found}")
    with torch.no_grad():
        for conv, (weight, bias) in zip(convs, offered.layers):
            conv.weight.copy_(weight.view_as(conv.weight))
            conv.bias.copy_(bias)
