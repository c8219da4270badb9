"""Backbones by name. A new family is one file exporting `BACKBONES = {name: build}` plus a line here."""
from __future__ import annotations

from typing import Any, Callable

from backbones import (
    alexnet, efficientnet, googlenet, lenet, mobilenet_v2, mobilenet_v3, resnet, shufflenet_v2, timm_models, vgg,
)
from backbones.base import Backbone
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


def build(name: str, pretrained: bool | str | None = False, **options: Any) -> Backbone:
    """`pretrained`: false | true | a weights name | a state-dict file, either the library model's or one of
    this pipeline's training checkpoints (its backbone part is loaded: autoencoder pre-training, then transfer)."""
    if is_file_path(pretrained):
        state = load_state_dict_file(pretrained)
        if any(key.startswith(CHECKPOINT_PREFIX) for key in state):
            backbone = _build(name, pretrained=False, **options)
            backbone.load_state_dict({k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items()
                                      if k.startswith(CHECKPOINT_PREFIX)})
            return backbone
    return _build(name, pretrained, **options)


def _build(name: str, pretrained: bool | str | None, **options: Any) -> Backbone:
    if name.startswith(TIMM_PREFIX):
        return timm_models.build(name[len(TIMM_PREFIX):], pretrained=pretrained, **options)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(names())}, or {TIMM_PREFIX}<timm model name>")
    return BACKBONES[name](pretrained=pretrained, **options)
