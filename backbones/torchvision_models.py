"""Build a torchvision classification model with offline weight resolution."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn
from torchvision.models import WeightsEnum

from backbones.weights import load_state_dict_file, require_cached

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_torchvision(builder: Callable[..., nn.Module], weights_enum: type[WeightsEnum], pretrained: bool | str) -> nn.Module:
    """`pretrained`: false, true (the library default), a weights name such as IMAGENET1K_V1, or a file path."""
    if pretrained is False or pretrained is None:
        return builder(weights=None)
    if isinstance(pretrained, str) and (Path(pretrained).suffix in {".pt", ".pth"} or "/" in pretrained):
        model = builder(weights=None)
        model.load_state_dict(load_state_dict_file(pretrained))
        return model
    name = "DEFAULT" if pretrained is True else str(pretrained)
    try:
        weights = weights_enum[name]
    except KeyError:
        valid = ", ".join(w.name for w in weights_enum)
        raise ValueError(f"unknown weights {name!r} for {builder.__name__}; valid: DEFAULT, {valid}") from None
    require_cached(weights.url)
    return builder(weights=weights)
