"""Backbones by name. A new family is one file exporting `BACKBONES = {name: build}` plus a line here."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from backbones import (
    alexnet, efficientnet, googlenet, lenet, mobilenet_v2, mobilenet_v3, resnet, shufflenet_v2, timm_models, vgg,
)
from backbones.base import Backbone
from backbones.dilation import check_output_stride
from backbones.input_channels import adapt_input_channels, first_conv_weight_key
from backbones.weights import is_file_path, load_state_dict_file

BACKBONES: dict[str, Callable[..., Backbone]] = {
    **lenet.BACKBONES,
    **alexnet.BACKBONES,
    **vgg.BACKBONES,
    **googlenet.BACKBONES,
    **resnet.BACKBONES,
    **mobilenet_v2.BACKBONES,
    **mobilenet_v3.BACKBONES,
    **shufflenet_v2.BACKBONES,
    **efficientnet.BACKBONES,
    **timm_models.BACKBONES,
}
TIMM_PREFIX = "timm:"  # `timm:<model name>`: any timm model through its features_only interface


def names() -> list[str]:
    return sorted(BACKBONES)


CHECKPOINT_PREFIX = "backbone."  # how a MultiTaskModel's state dict names its backbone's tensors


def build(name: str, pretrained: bool | str | None = False, in_channels: int = 3, output_stride: int = 32,
          **options: Any) -> Backbone:
    """`pretrained`: false | true | a weights name | a state-dict file, either the library model's or one of
    this pipeline's training checkpoints (its backbone part is loaded: autoencoder pre-training, then transfer).

    `in_channels`: image channels (data.channels). The family is built for RGB and its weights loaded, then
    its first convolution and normalisation are adapted to `in_channels` (backbones/input_channels.py). A
    training checkpoint may hold a backbone of `in_channels` channels (a run on the same data: adapted
    first, then loaded) or an RGB one (loaded, then adapted).

    `output_stride`: 32 (as designed), 16 or 8: the deepest stages dilate instead of downsampling
    (backbones/dilation.py); the parameters are the same, so every kind of weights above still loads."""
    check_output_stride(name, output_stride)
    if output_stride != 32:
        options["output_stride"] = output_stride  # only then: families without dilation take no such option
    if is_file_path(pretrained):
        state = load_state_dict_file(pretrained)
        if any(key.startswith(CHECKPOINT_PREFIX) for key in state):
            backbone = _build(name, pretrained=False, **options)
            weights = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
            saved = _checkpoint_channels(backbone, weights)
            if saved == in_channels:
                adapt_input_channels(backbone, in_channels)
            elif saved != 3:
                raise ValueError(f"{pretrained}: its {name} backbone takes {saved} image channels; it can start a "
                                 f"model of {saved} channels (data.channels: {saved}) or, were it RGB, of any "
                                 f"count, but not one of {in_channels}")
            backbone.load_state_dict(weights)
            return adapt_input_channels(backbone, in_channels)
    return adapt_input_channels(_build(name, pretrained, **options), in_channels)


def _checkpoint_channels(backbone: Backbone, weights: dict[str, Any]) -> int:
    """Input channels of the first convolution in a checkpoint's backbone tensors (3 when it is not there:
    load_state_dict then names the mismatch)."""
    tensor = weights.get(first_conv_weight_key(backbone))
    return int(tensor.shape[1]) if tensor is not None and tensor.dim() == 4 else 3


def _build(name: str, pretrained: bool | str | None, **options: Any) -> Backbone:
    if name.startswith(TIMM_PREFIX):
        return timm_models.build(name[len(TIMM_PREFIX):], pretrained=pretrained, **options)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(names())}, or {TIMM_PREFIX}<timm model name>")
    builder = BACKBONES[name]
    if "output_stride" in options and "output_stride" not in inspect.signature(builder).parameters:
        raise ValueError(f"backbone {name} cannot change its output stride (its stages downsample by pooling); it "
                         f"supports output_stride 32 only. Dilated ones (16, 8): {', '.join(dilatable_names())}, "
                         f"or {TIMM_PREFIX}<timm model name>")
    return builder(pretrained=pretrained, **options)


def dilatable_names() -> list[str]:
    """Backbones that take output_stride 16 and 8."""
    return [n for n in names() if "output_stride" in inspect.signature(BACKBONES[n]).parameters]
