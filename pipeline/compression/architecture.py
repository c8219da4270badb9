"""The shapes of a (possibly pruned) model, as a checkpoint records them, and resizing a freshly built model
of the same config to them so that the checkpoint's weights load.

Pruning (pipeline/compression/pruning.py) changes layers' channel counts; the config still describes the
unpruned model. So every checkpoint the trainer writes records `architecture(model)`: each torch.nn layer's
channel attributes and the backbone's stage channels (ints and strings only: weights_only loading reads it).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

# Module attributes that a channel change alters; the checkpoint stores them so a fresh model can be resized.
SHAPE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                    "num_channels", "num_groups")


def architecture(model: nn.Module) -> dict[str, Any]:
    """What a pruned model's shapes are, for a checkpoint: each torch.nn layer's channel attributes and the
    backbone's stage channels. Only ints, strings and containers: weights_only loading reads it."""
    shapes = {name: shape_attributes(module) for name, module in model.named_modules()}
    return {"shapes": {name: s for name, s in shapes.items() if s}, "backbone_channels": list(model.backbone.channels)}


def shape_attributes(module: nn.Module) -> dict[str, int]:
    """The channel-count attributes of a torch.nn layer (Conv, Linear, norms); none for the project's own
    modules, whose like-named attributes may be read-only properties derived from their layers."""
    if not type(module).__module__.startswith("torch.nn."):
        return {}
    return {attr: getattr(module, attr) for attr in SHAPE_ATTRIBUTES if isinstance(getattr(module, attr, None), int)}


def resize_to(model: nn.Module, saved: dict[str, Any], weights: dict[str, Tensor]) -> None:
    """Give a freshly built model of the same config the shapes of `saved` (an `architecture`) and of the
    tensors in `weights`, ready for load_state_dict. An unpruned architecture changes nothing."""
    modules = dict(model.named_modules())
    for name, attributes in saved["shapes"].items():
        for attr, value in attributes.items():   # a layer this model lacks: load_state_dict names the mismatch
            if name in modules:
                setattr(modules[name], attr, value)
    for name, module in modules.items():
        resize_tensors(module, name, weights)
    model.backbone.channels = list(saved["backbone_channels"])


def resize_tensors(module: nn.Module, name: str, weights: dict[str, Tensor]) -> None:
    """Replace a module's own parameters and buffers by empty ones of the checkpoint's shapes."""
    prefix = f"{name}." if name else ""
    for key, param in list(module.named_parameters(recurse=False)):
        saved = weights.get(prefix + key)
        if saved is not None and saved.shape != param.shape:
            setattr(module, key, nn.Parameter(param.new_empty(saved.shape), requires_grad=param.requires_grad))
    for key, buffer in list(module.named_buffers(recurse=False)):
        saved = weights.get(prefix + key)
        if buffer is not None and saved is not None and saved.shape != buffer.shape:
            setattr(module, key, buffer.new_empty(saved.shape))
