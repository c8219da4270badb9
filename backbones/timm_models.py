"""Any timm model as a Backbone, through timm's `features_only` interface.

timm's FeatureListNet runs its child modules in order and returns the output
of the ones named in `feature_info`; grouping the children so each group ends
at one of those gives our chained stages (one per returned map), so freezing
by stage works. Channels, strides and the input normalisation come from timm
(`feature_info`, `pretrained_cfg`).

Weights come from a local file handed to timm's own loader through
`pretrained_cfg_overlay=dict(file=...)`, so timm never reaches for the
Hugging Face hub. Random init is timm's own for each model.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import FeatureListNet
from torch import nn

from backbones.base import Backbone
from backbones.weights import TIMM_CONVERTED_PACKAGES, is_file_path, load_state_dict_file, require_cached

# Options asking features_only for a FeatureListNet, tried in order. Some families (EfficientNet, MobileNetV3)
# otherwise return their own feature class, and tap blocks inside a Sequential, which must be flattened to be
# children; families whose builder sets its own feature_cfg reject a second one, and need only the first.
FEATURE_LIST_OPTIONS = (
    {"feature_cls": "list"},
    {"feature_cfg": {"feature_cls": "list", "flatten_sequential": True}},
)


def build(model_name: str, pretrained: bool | str | None = False, output_stride: int = 32) -> Backbone:
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; timm.list_models() lists the valid names")
    create_name, weights_file = resolve_weights(model_name, pretrained)
    weights: dict[str, Any] = {"pretrained": False}
    if weights_file is not None:
        weights = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights_file)}}
    features = _create_features(model_name, create_name, weights, output_stride)
    strides = features.feature_info.reduction()
    if not _strides_ok(strides, output_stride):
        raise ValueError(f"timm model {model_name!r} returns maps at strides {strides}; a backbone's stages must "
                         f"each end at a new, larger stride (up to output_stride {output_stride})")
    cfg = features.pretrained_cfg
    return Backbone(_chained_stages(features), channels=features.feature_info.channels(), strides=strides,
                    mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _create_features(model_name: str, create_name: str, weights: dict[str, Any], output_stride: int) -> nn.Module:
    """timm's own dilation (`output_stride`), asked for only when not 32: some families do not take the option."""
    dilation = {} if output_stride == 32 else {"output_stride": output_stride}
    try:
        return timm.create_model(create_name, features_only=True, **weights, **dilation,
                                 **_feature_list_options(model_name))
    except (TypeError, AssertionError, NotImplementedError) as error:
        if not dilation:
            raise
        raise ValueError(f"timm model {model_name!r} cannot be built at output_stride {output_stride} ({error}); "
                         f"use output_stride 32") from error


def _strides_ok(strides: list[int], output_stride: int) -> bool:
    """Strictly increasing, except that dilated stages repeat the output stride."""
    return all(b > a or (output_stride != 32 and a == b == output_stride) for a, b in zip(strides, strides[1:]))


def resolve_weights(model_name: str, pretrained: bool | str | None) -> tuple[str, Path | None]:
    """(name to create, with a pretrained tag if one was asked for; local weights file or None).

    `pretrained`: false; true (the offline converted file if there is one, else timm's default tag);
    a timm pretrained tag such as `a1_in1k`; or the path of a timm model's state-dict file.
    """
    if pretrained is False or pretrained is None:
        return model_name, None
    if is_file_path(pretrained):
        _check_state_dict(model_name, Path(pretrained))
        return model_name, Path(pretrained)
    if pretrained is True and model_name in TIMM_CONVERTED_PACKAGES:
        return model_name, require_cached(TIMM_CONVERTED_PACKAGES[model_name][0])
    tagged = model_name if pretrained is True else f"{model_name}.{pretrained}"
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{model_name}.*")]
    if pretrained is not True and pretrained not in tags:
        raise ValueError(f"unknown weights {pretrained!r} for timm's {model_name}; valid: true, "
                         f"{', '.join(tags) or '(no pretrained tags)'}, or a state-dict file path")
    cfg = timm.models.get_pretrained_cfg(tagged)
    if cfg is None or not cfg.url:
        hub = f" ({cfg.hf_hub_id} on the Hugging Face hub)" if cfg is not None and cfg.hf_hub_id else ""
        raise FileNotFoundError(f"timm's {tagged} weights{hub} have no file this pipeline can use offline; save "
                                f"that timm model's state dict to a file and set `pretrained: path/to/file.pth`")
    return tagged, require_cached(cfg.url)  # the file name timm's own hub-cache download would have


def _feature_list_options(model_name: str) -> dict[str, Any]:
    """The FEATURE_LIST_OPTIONS entry that gives this model a FeatureListNet (probed on the meta device)."""
    error: Exception | None = None
    for options in FEATURE_LIST_OPTIONS:
        try:
            with torch.device("meta"):  # no memory, no init cost
                timm.create_model(model_name, features_only=True, **options)
            return options
        except (AssertionError, TypeError) as e:
            error = e
    raise ValueError(f"timm model {model_name!r} has no chain of child modules to cut into stages (its features "
                     f"come from hooks or a feature getter)") from error


def _chained_stages(features: FeatureListNet) -> list[nn.Module]:
    """FeatureListNet's children grouped so that each group ends at one returned map."""
    stages, group = [], []
    for name, child in features.named_children():
        group.append(child)
        if name in features.return_layers:
            stages.append(nn.Sequential(*group))
            group = []
    return stages


def _check_state_dict(model_name: str, path: Path) -> None:
    """timm loads feature backbones non-strictly; make sure the file really is this model's state dict."""
    with torch.device("meta"):
        model = timm.create_model(model_name)
    classifier = model.pretrained_cfg.get("classifier") or ()
    skip = tuple(f"{name}." for name in ([classifier] if isinstance(classifier, str) else classifier))
    state = load_state_dict_file(path)
    wrong = [key for key, tensor in model.state_dict().items()
             if not (skip and key.startswith(skip)) and (key not in state or state[key].shape != tensor.shape)]
    if wrong:
        raise ValueError(f"{path} is not a state dict of timm's {model_name}: {len(wrong)} tensors are missing or "
                         f"of another shape, first {wrong[:3]}")


# Named entries; any other timm model is `timm:<name>` (see registry.py).
BACKBONES = {name: partial(build, name) for name in ("seresnet50", "tf_efficientnet_lite0")}
