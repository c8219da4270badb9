"""Weight quantisers for quantisation-aware training: 8/4-bit uniform, ternary and binary, per output channel.

Each quantiser maps a weight tensor [O, ...] to the values the deployed model will hold, with one scale per
output channel. Training sees the quantised weights in the forward pass and updates the full-precision ones with
the straight-through estimator (the gradient passes the rounding unchanged), so the network learns weights that
survive quantisation. `quantise_weights` attaches a quantiser to layers as a torch parametrization, so
checkpoints keep the full-precision weights; `bake` replaces them by their quantised values for export.

- uniform (bits >= 3): symmetric, scale = max|w| / (2^(bits-1) - 1), values round(w / scale) * scale.
- ternary (bits 2): Ternary Weight Networks (Li & Liu, 2016): threshold 0.7 x mean|w|; weights above it keep
  their sign, times the mean magnitude of those weights; the rest become 0: values {-s, 0, +s}.
- binary (bits 1): XNOR-Net (Rastegari et al., 2016): sign(w) x mean|w|: values {-s, +s}.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

TERNARY_THRESHOLD = 0.7         # x mean|w|: the TWN paper's approximation of the optimal threshold
SUPPORTED_BITS = (1, 2, 4, 8)


def _per_channel(values: Tensor, weight: Tensor) -> Tensor:
    """[O] -> [O, 1, 1, ...]: broadcastable against `weight`."""
    return values.view(-1, *([1] * (weight.dim() - 1)))


def uniform(weight: Tensor, bits: int) -> Tensor:
    levels = 2 ** (bits - 1) - 1
    scale = _per_channel(weight.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-12) / levels, weight)
    return (weight / scale).round().clamp(-levels, levels) * scale


def ternary(weight: Tensor) -> Tensor:
    magnitude = weight.detach().abs()
    threshold = _per_channel(TERNARY_THRESHOLD * magnitude.flatten(1).mean(dim=1), weight)
    kept = magnitude > threshold
    kept_count = kept.flatten(1).sum(dim=1).clamp(min=1)
    scale = _per_channel((magnitude * kept).flatten(1).sum(dim=1) / kept_count, weight)
    return torch.sign(weight) * kept * scale


def binary(weight: Tensor) -> Tensor:
    scale = _per_channel(weight.detach().abs().flatten(1).mean(dim=1), weight)
    return torch.where(weight >= 0, scale, -scale)


def quantised(weight: Tensor, bits: int) -> Tensor:
    if bits == 1:
        return binary(weight)
    if bits == 2:
        return ternary(weight)
    return uniform(weight, bits)


class WeightQuantiser(nn.Module):
    """A parametrization: the quantised weight forward, the identity backward (straight-through)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits: expected one of {SUPPORTED_BITS}, got {bits!r}")
        self.bits = bits

    def forward(self, weight: Tensor) -> Tensor:
        # q + (w - w) is exactly q in value (w - w.detach() is an exact zero) with d/dw = 1: no rounding
        # error creeps into the baked weights, which stay exactly on the quantisation levels.
        return quantised(weight, self.bits).detach() + (weight - weight.detach())


def quantisable_layers(model: nn.Module, keep: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """Every Conv2d / Linear by name, except those named in `keep` (full precision, e.g. the first and output
    layers, as XNOR-Net and TWN keep them)."""
    kept = set(keep)
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in kept]


def quantise_weights(model: nn.Module, bits: int, keep: Iterable[str] = ()) -> list[str]:
    """Attach a WeightQuantiser to every quantisable layer's weight; returns the layers' names."""
    layers = quantisable_layers(model, keep)
    for _, module in layers:
        parametrize.register_parametrization(module, "weight", WeightQuantiser(bits))
    return [name for name, _ in layers]


def bake(model: nn.Module) -> int:
    """Replace every quantised weight by its quantised value and drop the parametrizations (for export and
    deployment); returns how many were baked."""
    baked = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            # Removing a parametrization deletes its property from the module's class, a class deepcopy
            # shares between a model and its copies: give this module a class of its own first, or baking
            # an export's copy would leave the trained model without weights.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            baked += 1
    return baked
