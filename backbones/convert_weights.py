"""Rename a foreign state dict onto a timm model's keys, tensor by tensor in order.

Used for packaged weights written by another EfficientNet code base
(lukemelas-style `_conv_stem`, `_blocks.N._bn1`, ..., `_fc`): both code bases
register the same layers in the same order, so the i-th tensor of one is the
i-th of the other. Every shape is checked, so a wrong pairing fails loudly.
"""
from __future__ import annotations

import timm
import torch
from torch import Tensor


def to_timm_keys(source: dict[str, Tensor], model_name: str) -> dict[str, Tensor]:
    with torch.device("meta"):  # only the target's key names and shapes are needed
        target = timm.create_model(model_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{model_name}: the source state dict has {len(source)} tensors, timm's model {len(target)}")
    converted = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"{model_name}: source {source_key} {tuple(tensor.shape)} does not fit "
                             f"timm's {target_key} {tuple(expected.shape)}")
        converted[target_key] = tensor
    return converted
