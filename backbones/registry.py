"""Backbones by name. A new backbone is one file with `build(pretrained, **options)` plus a line here."""
from __future__ import annotations

from typing import Any, Callable

from backbones import mobilenet_v2, resnet18
from backbones.base import Backbone

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "mobilenet_v2": mobilenet_v2.build,
    "resnet18": resnet18.build,
}


def names() -> list[str]:
    return sorted(BACKBONES)


def build(name: str, pretrained: bool | str = False, **options: Any) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(names())}")
    return BACKBONES[name](pretrained=pretrained, **options)
