"""Output stride 16 or 8: the deepest stages stop downsampling and dilate instead (DeepLab's atrous trick).

A stage that would halve the resolution keeps it: its strided convs get stride 1, and every later conv
is dilated by the factor the lost strides would have given, so each conv still sees the same input
grid spacing and the pretrained weights stay valid (dilation and stride change no parameter).
"""
from __future__ import annotations

from torch import nn

OUTPUT_STRIDES = (32, 16, 8)


def check_output_stride(name: str, output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"backbone {name}: output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, "
                         f"got {output_stride!r}")


def capped_strides(strides: list[int], output_stride: int) -> list[int]:
    """Declared strides once no stage goes beyond `output_stride`: [2,4,8,16,32] at 16 -> [2,4,8,16,16]."""
    return [min(stride, output_stride) for stride in strides]


def resnet_dilation(output_stride: int) -> list[bool]:
    """torchvision's `replace_stride_with_dilation` for layer2..layer4."""
    return {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]


def dilate_stages(name: str, stages: list[nn.Module], strides: list[int], output_stride: int) -> list[int]:
    """Turn the stages that would pass `output_stride` into dilated ones, in place; returns the new strides.

    Each such stage must downsample by exactly 2 through strided convs only (parallel branches, as in
    ShuffleNet, may each hold one): a strided pool cannot be dilated without changing what it computes.
    """
    dilation = 1
    for stage, stride, previous in zip(stages, strides, [1] + strides[:-1]):
        if stride <= output_stride:
            continue
        if stride != 2 * previous:
            raise ValueError(f"backbone {name}: stage at stride {stride} does not downsample by 2; it cannot be "
                             f"dilated (supported output_stride: 32)")
        _refuse_strided_pools(name, stage)
        _dilate_stage(stage, dilation)
        dilation *= 2
    return capped_strides(strides, output_stride)


def _refuse_strided_pools(name: str, stage: nn.Module) -> None:
    pools = (nn.MaxPool2d, nn.AvgPool2d)
    if any(isinstance(m, pools) and _pair(m.stride) != (1, 1) for m in stage.modules()):
        raise ValueError(f"backbone {name} downsamples by pooling in its deepest stages, which cannot be dilated; "
                         f"it supports output_stride 32 only (dilated: resnet*, resnext*, mobilenet_v2/v3, "
                         f"efficientnet_b0, shufflenet_v2_x1_0, timm models)")


def _dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Strided convs (and convs before them) keep the incoming dilation; convs after the first one double it."""
    seen_stride = False
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if _pair(module.stride) != (1, 1):
            module.stride = (1, 1)
            _set_dilation(module, dilation)
            seen_stride = True
        else:
            _set_dilation(module, dilation * 2 if seen_stride else dilation)


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    if conv.kernel_size == (1, 1):
        return  # a 1x1 conv has nothing to spread
    conv.dilation = (dilation, dilation)
    # "same" padding for the dilated kernel, so the map size stays what the stride-1 conv gives
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
