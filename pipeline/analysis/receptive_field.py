"""Theoretical receptive field and effective stride, measured rather than derived.

Chain formulas (r += (k - 1) * j; j *= s) are wrong as soon as a network
branches, adds a residual or concatenates, so the field is measured on the
real graph instead:

1. Copy the model (float64, eval mode) and linearise it: every conv/linear
   weight becomes a positive constant 1/fan_in, biases 0, other parameters 1;
   inside a `TorchFunctionMode`, max pooling becomes average pooling of the same
   geometry, activations and normalisation layers (batch/layer/group/instance
   norm) become the identity. The result is a linear map with non-negative
   coefficients, so there is no cancellation: an input pixel has a non-zero
   gradient exactly when some path connects it to the output unit.
2. Feed an all-ones image (batch 1) that requires grad, and for each requested
   layer take the gradient of its centre output unit, summed over channels
   (for a [B, C] or [B, L, D] output: of all of it), with respect to the input.
3. The receptive field is the extent (rows x columns) of that gradient's
   non-zero support. When the support reaches the input border the true
   field may be larger: it is flagged `clipped` and printed ">=N". Measure on
   a larger input to resolve it.

The effective stride is input size / output size per axis.

Float64 keeps the faint edges of deep fields (products of many 1/k^2 factors)
from underflowing to zero.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

METHOD = ("RF: theoretical receptive field in input pixels, measured as the non-zero support of the gradient of the "
          "layer's centre output unit (summed over channels) w.r.t. the input, on a copy with positive weights, "
          "max-pool -> avg-pool, activations and norms -> identity; '>=N': the support reaches the input border. "
          "Stride: input size / output size.")

# Functions (by name, wherever torch dispatches them from: torch.*, F.*, Tensor.*) replaced by the identity.
IDENTITY_FUNCTIONS = frozenset({
    # activations
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardsigmoid", "hardswish", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "silu", "gelu", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "mish", "softplus", "prelu", "rrelu", "rrelu_", "threshold", "threshold_",
    # normalisation (pointwise in space, so it never changes the receptive field)
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm", "rms_norm",
})
MAX_POOLS = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3,
             "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3}
ADAPTIVE_MAX_POOLS = {"adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3,
                      "adaptive_max_pool1d_with_indices": 1, "adaptive_max_pool2d_with_indices": 2,
                      "adaptive_max_pool3d_with_indices": 3}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
ADAPTIVE_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
ADAPTIVE_MAX_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class ReceptiveField:
    size: tuple[int, int]            # (rows, columns) of the gradient support, in input pixels
    clipped: bool                    # the support reaches the input border: the true field is at least `size`
    stride: tuple[float, float] | None = None  # input size / output size per axis; None for non-spatial outputs

    def size_text(self) -> str:
        rows, cols = self.size
        text = str(rows) if rows == cols else f"{rows}x{cols}"
        return (">=" if self.clipped else "") + text

    def stride_text(self) -> str:
        if self.stride is None:
            return "-"
        sy, sx = (f"{s:.3g}" for s in self.stride)
        return sy if sy == sx else f"{sy}x{sx}"


def _max_pool_args(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return input, kernel_size, stride, padding, dilation, ceil_mode, return_indices


def _adaptive_args(input, output_size, return_indices=False):
    return input, output_size, return_indices


def _ntuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class Linearised(TorchFunctionMode):
    """While active: max pooling -> average pooling of the same geometry; activations, norms -> identity."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in IDENTITY_FUNCTIONS:
            return args[0] if args else next(iter(kwargs.values()))
        if name in MAX_POOLS:
            return self._avg_pool(MAX_POOLS[name], name.endswith("_with_indices"), args, kwargs)
        if name in ADAPTIVE_MAX_POOLS:
            dims = ADAPTIVE_MAX_POOLS[name]
            x, output_size, return_indices = _adaptive_args(*args, **kwargs)
            out = ADAPTIVE_AVG_POOL[dims](x, output_size)
            if return_indices or name.endswith("_with_indices"):  # keep the real indices for a later max_unpool
                return out, ADAPTIVE_MAX_POOL[dims](x.detach(), output_size, return_indices=True)[1]
            return out
        return func(*args, **kwargs)

    @staticmethod
    def _avg_pool(dims: int, with_indices: bool, args, kwargs):
        x, kernel, stride, padding, dilation, ceil_mode, return_indices = _max_pool_args(*args, **kwargs)
        stride = stride if stride else kernel   # torch.max_pool2d takes stride=[] for "same as kernel"
        if all(d == 1 for d in _ntuple(dilation, dims)):
            out = AVG_POOL[dims](x, kernel, stride, padding, ceil_mode=ceil_mode)
        else:  # a dilated window: a depthwise conv with a uniform kernel has the same footprint
            k = _ntuple(kernel, dims)
            weight = torch.full((x.shape[-dims - 1], 1, *k), 1.0 / math.prod(k), dtype=x.dtype, device=x.device)
            out = CONV[dims](x, weight, None, stride, padding, dilation, groups=x.shape[-dims - 1])
        if with_indices or return_indices:  # keep the real indices for a later max_unpool
            return out, MAX_POOL[dims](x.detach(), kernel, stride, padding, dilation, ceil_mode=ceil_mode,
                                       return_indices=True)[1]
        return out


@torch.no_grad()
def linearised_copy(model: nn.Module) -> nn.Module:
    """A float64 copy with positive weights (1/fan_in), zero biases, other parameters 1, in eval mode."""
    probe = copy.deepcopy(model).to(torch.float64).eval()
    for name, param in probe.named_parameters():
        if param.ndim >= 2:
            param.fill_(1.0 / math.prod(param.shape[1:]))
        elif name.rsplit(".", 1)[-1] == "bias":
            param.zero_()
        else:
            param.fill_(1.0)
        param.requires_grad_(False)
    return probe


def _support_extent(mask: Tensor) -> tuple[int, int, bool] | None:
    """Rows and columns spanned by the True entries of an [H, W] mask, and whether they touch the border."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    h, w = mask.shape
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    clipped = top == 0 or left == 0 or bottom == h - 1 or right == w - 1
    return bottom - top + 1, right - left + 1, clipped


def measure(model: nn.Module, input_shape: tuple[int, int, int], layers: list[str]) -> dict[str, ReceptiveField]:
    """Receptive field and stride of each named submodule's output ("" is the model itself) for one
    `input_shape` (C, H, W) image. Layers whose output is not a single tensor, or does not depend on
    the input, are left out of the result."""
    probe = linearised_copy(model)
    modules = dict(probe.named_modules())
    captured: dict[str, Tensor] = {}
    # (id, version) of an output -> (the output, kept alive so its id is not reused; its snapshot)
    seen: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def capture(name: str):
        def hook(module, inputs, output):
            if name in captured or not isinstance(output, Tensor) or not output.requires_grad:
                return
            # A snapshot: later in-place ops (`out += identity`) must not change what this layer's output was.
            # A norm turned identity returns its input unchanged, so it shares the snapshot of the layer before.
            key = (id(output), output._version)
            if key not in seen:
                seen[key] = (output, output.clone())
            captured[name] = seen[key][1]
        return hook

    handles = [modules[name].register_forward_hook(capture(name)) for name in layers if name in modules]
    image = torch.ones(1, *input_shape, dtype=torch.float64, requires_grad=True)
    try:
        with Linearised():
            probe(image)
    finally:
        for handle in handles:
            handle.remove()

    height, width = input_shape[-2:]
    results: dict[str, ReceptiveField] = {}
    by_tensor: dict[int, ReceptiveField] = {}
    for name in layers:
        out = captured.get(name)
        if out is None:
            continue
        if id(out) not in by_tensor:
            if out.ndim == 4:
                unit = out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum()
                stride = (height / out.shape[2], width / out.shape[3])
            else:
                unit, stride = out.sum(), None
            (grad,) = torch.autograd.grad(unit, image, retain_graph=True, allow_unused=True)
            extent = None if grad is None else _support_extent(grad[0].ne(0).any(dim=0))
            if extent is None:
                continue
            rows, cols, clipped = extent
            by_tensor[id(out)] = ReceptiveField((rows, cols), clipped, stride)
        results[name] = by_tensor[id(out)]
    return results
