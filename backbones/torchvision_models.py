"""Build a torchvision classification model with offline weight resolution, and cut it into stages."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn
from torchvision.models import WeightsEnum

from backbones.base import Backbone
from backbones.dilation import dilate_stages
from backbones.weights import is_file_path, load_state_dict_file, require_cached

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_torchvision(
    builder: Callable[..., nn.Module],
    weights_enum: type[WeightsEnum],
    pretrained: bool | str | None,
    ignore_keys: tuple[str, ...] = (),
    **kwargs: Any,
) -> nn.Module:
    """`pretrained`: false, true (the library default), a weights name such as IMAGENET1K_V1, or a file path.

    A file holds the torchvision model's state dict; keys starting with `ignore_keys` (parts the adapter
    drops, such as auxiliary classifiers) are skipped, every other key must match.
    """
    weights = resolve_weights(weights_enum, pretrained)
    if isinstance(weights, Path):
        model = builder(weights=None, **kwargs)
        state = load_state_dict_file(weights)
        model.load_state_dict({k: v for k, v in state.items() if not (ignore_keys and k.startswith(ignore_keys))})
        return model
    return builder(weights=weights, **kwargs)


def resolve_weights(weights_enum: type[WeightsEnum], pretrained: bool | str | None) -> WeightsEnum | Path | None:
    """The weights enum member (its file checked to be cached), a state-dict path, or None for random init."""
    if pretrained is False or pretrained is None:
        return None
    if is_file_path(pretrained):
        return Path(pretrained)
    name = "DEFAULT" if pretrained is True else str(pretrained)
    try:
        weights = weights_enum[name]
    except KeyError:
        valid = ", ".join(w.name for w in weights_enum)
        raise ValueError(f"unknown weights {name!r} ({weights_enum.__name__}); valid: true (DEFAULT), {valid}, "
                         f"or a state-dict file path") from None
    require_cached(weights.url)  # fail now rather than let torchvision try the network
    return weights


def cut(layers: nn.Sequential, ends: list[int]) -> list[nn.Sequential]:
    """Consecutive slices of `layers`, the i-th ending (exclusive) at ends[i]; together they cover layers[:ends[-1]]."""
    starts = [0] + ends[:-1]
    return [nn.Sequential(*layers[a:b]) for a, b in zip(starts, ends)]


def features_backbone(builder: Callable[..., nn.Module], weights_enum: type[WeightsEnum], pretrained: bool | str | None,
                      stage_ends: list[int], channels: list[int], name: str, output_stride: int = 32) -> Backbone:
    """A torchvision model whose `features` Sequential ends a stage at each of strides 2, 4, 8, 16, 32
    (MobileNetV2/V3, EfficientNet): cut it there, with ImageNet normalisation. `output_stride` 16 or 8
    dilates the deepest stages (backbones/dilation.py) after the weights are loaded."""
    features = build_torchvision(builder, weights_enum, pretrained).features
    stages = cut(features, stage_ends)
    strides = dilate_stages(name, stages, [2, 4, 8, 16, 32], output_stride)
    return Backbone(stages, channels=channels, strides=strides, mean=IMAGENET_MEAN, std=IMAGENET_STD)
