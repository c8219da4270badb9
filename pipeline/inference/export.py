"""Export a trained model to ONNX (torch.onnx, dynamo) or TorchScript (torch.jit.trace), with its sidecar JSON.

What is exported is `NamedOutputsModel(trained.model)`: one input "image" (float32 [B, C, H, W] in [0, 1]; the
backbone normalises inside) and one named output per head output ("<task>_<name>"), the same names the
MLflow-logged model returns. Decoding (softmax, NMS) stays outside, with the heads (`OnnxRunner`) or with the
sidecar's description of each output for users without this code.

Batch, height and width are dynamic by default: the architectures here are fully convolutional, and H, W must
be multiples of the backbone's largest stride. A dynamic dimension is only claimed after the exported file
has reproduced PyTorch at another batch size and image size; when the exporter cannot make one dynamic (it
fails, fixes it, or gives different numbers there), the export falls back to batch-only, then to a static
size, with a logged warning saying why, recorded in the sidecar.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pipeline.compression.weight_quantisers import bake
from pipeline.inference.named_outputs import NamedOutputsModel
from pipeline.inference.onnx_runner import INPUT_NAME, TORCHSCRIPT_EXTRA
from pipeline.inference.sidecar import build_sidecar, shape_pattern, write_sidecar
from pipeline.inference.trained import TrainedModel

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 18   # opset 17 fails in onnxscript's version converter for these models
DIM_NAMES = {0: "batch", 2: "height", 3: "width"}
ATTEMPTS = (("batch", "height", "width"), ("batch",), ())   # dynamic dimensions, most to fewest
EXAMPLE_BATCH = 2    # a batch of 1 would let the exporter fix the batch dimension at 1
# Exported and eager results agree to fp32 rounding (~1e-6); a shape baked in at trace time is far off.
PROBE_RTOL, PROBE_ATOL = 1e-3, 1e-4


class ExportError(ValueError):
    """What stops an export: a format, a file in the way, a model the exporter cannot convert."""


@dataclass
class ExportResult:
    model_path: Path
    sidecar_path: Path
    format: str
    outputs: dict[str, list[str]]        # task -> its output names, in the file's order
    input_shape: list[int | str]         # names where dynamic ("batch", "height", "width"), sizes where fixed
    fallbacks: list[str] = field(default_factory=list)   # why a dimension asked to be dynamic is fixed
    sidecar: dict = field(default_factory=dict)          # what was written


@dataclass
class _Exported:
    """One export attempt, before it is written where it belongs."""
    run: Callable[[Tensor], dict[str, Tensor]]   # image -> named outputs, in the exported runtime
    input_shape: list[int | str]
    save: Callable[[Path, list[int | str]], None]


def default_path(checkpoint: Path, format: str) -> Path:
    """Beside the checkpoint: last.pt -> last.onnx / last.torchscript.pt."""
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[format])


def deployed(model: nn.Module) -> nn.Module:
    """The model as it ships: a quantisation-aware model's weights replaced by their quantised values (a copy;
    the trained model keeps its full-precision weights), any other model as it is."""
    if not any(parametrize.is_parametrized(module) for module in model.modules()):
        return model
    copy_ = copy.deepcopy(model)
    bake(copy_)
    return copy_


def export_model(trained: TrainedModel, out: str | Path, format: str = "onnx", dynamic: bool = True,
                 opset: int = DEFAULT_OPSET, example: Tensor | None = None) -> ExportResult:
    """Write `out` and its sidecar `<out>.json`. `example`: images [N, C, H, W] in [0, 1] to trace with
    (default: random ones at the trained image size)."""
    if format not in FORMATS:
        raise ExportError(f"export format: expected one of {list(FORMATS)}, got {format!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The exporter restores the wrapper's train/eval flag afterwards, and a fresh module is in training mode:
    # BatchNorm would then use batch statistics, in the reference as in the export.
    wrapper = NamedOutputsModel(deployed(trained.model)).eval()
    stride = max(trained.model.backbone.strides)
    example = _example(trained, example)
    with torch.no_grad():
        reference = wrapper(example)
    names = list(reference)
    shapes = _shape_patterns(wrapper, example, reference, stride)
    exporter = _export_onnx if format == "onnx" else _export_torchscript
    partial = out.with_name(out.name + ".partial")
    fallbacks: list[str] = []
    log.info("exporting %s to %s (%s)", trained.checkpoint, out, format)
    try:
        for dims in ATTEMPTS if dynamic else ((),):
            # A size the model itself cannot take is not worth an export (a classifier over a flattened map).
            reason = _pytorch_limit(wrapper, example, stride, dims)
            if reason is None:
                exported, reason = _attempt(exporter, wrapper, example, names, dims, opset, partial, stride)
                if exported is not None:
                    reason = _check_dynamic(exported, wrapper, example, stride, dims)
            if reason is None:
                break
            fallbacks.append(f"dynamic {'/'.join(dims)}: {reason}")
            log.warning("%s: %s; falling back to %s", out, fallbacks[-1], _describe(_next(dims)))
        exported.save(partial, exported.input_shape)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    sidecar = build_sidecar(trained, out, format, names, shapes, exported.input_shape, stride,
                            opset if format == "onnx" else None, fallbacks)
    by_task: dict[str, list[str]] = {}
    for entry in sidecar["outputs"]:
        by_task.setdefault(entry["task"], []).append(entry["name"])
    return ExportResult(out, write_sidecar(out, sidecar), format, by_task, exported.input_shape, fallbacks, sidecar)


def _attempt(exporter, wrapper: NamedOutputsModel, example: Tensor, names: list[str], dims: tuple[str, ...],
             opset: int, partial: Path, stride: int) -> tuple[_Exported | None, str | None]:
    try:
        return exporter(wrapper, example, names, dims, opset, partial, stride), None
    except ExportError:
        raise
    except Exception as error:  # the exporters raise many types; the reason is in the message
        reason = _first_line(error)
        if not dims:
            raise ExportError(f"the exporter cannot convert this model: {reason}") from error
        return None, f"the exporter failed ({reason})"


def _check_dynamic(exported: _Exported, wrapper: NamedOutputsModel, example: Tensor, stride: int,
                   dims: tuple[str, ...]) -> str | None:
    """None when every dimension asked to be dynamic is, and the export reproduces PyTorch there; else why not."""
    fixed = [DIM_NAMES[i] for i, value in enumerate(exported.input_shape)
             if i in DIM_NAMES and DIM_NAMES[i] in dims and isinstance(value, int)]
    if fixed:
        return f"the exporter fixed {'/'.join(fixed)} (at the example's {[int(example.shape[i]) for i in (0, 2, 3)]})"
    if not dims:
        return None
    image = _probe_input(example, stride, dims)
    with torch.no_grad():
        expected = wrapper(image)
    try:
        got = exported.run(image)
    except Exception as error:  # a runtime's shape errors come in its own types
        return f"the export fails at input {list(image.shape)} ({_first_line(error)})"
    for name, value in expected.items():
        if got[name].shape != value.shape or not torch.allclose(got[name], value, PROBE_RTOL, PROBE_ATOL):
            found = f"shape {tuple(got[name].shape)}" if got[name].shape != value.shape else \
                f"max abs diff {(got[name] - value).abs().max().item():.3g}"
            return (f"its output {name} at input {list(image.shape)} differs from PyTorch ({found}; expected "
                    f"shape {tuple(value.shape)})")
    return None


def _pytorch_limit(wrapper: NamedOutputsModel, example: Tensor, stride: int, dims: tuple[str, ...]) -> str | None:
    """Why the PyTorch model itself cannot take another size along `dims`, or None when it can."""
    if not dims:
        return None
    image = _probe_input(example, stride, dims)
    try:
        with torch.no_grad():
            wrapper(image)
    except Exception as error:  # the model's own size limits come as any type
        return f"the model itself does not run at input {list(image.shape)} ({_first_line(error)})"
    return None


# ---- ONNX -------------------------------------------------------------------------------------------------

def _export_onnx(wrapper: NamedOutputsModel, example: Tensor, names: list[str], dims: tuple[str, ...],
                 opset: int, partial: Path, size_multiple: int) -> _Exported:
    from torch.export import Dim

    dynamic_shapes = ({i: Dim(name) for i, name in DIM_NAMES.items() if name in dims},) if dims else None
    with _quiet_exporter():
        program = torch.onnx.export(wrapper, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=names, dynamic_shapes=dynamic_shapes, opset_version=opset,
                                    verbose=False)
        program.save(str(partial))
    return _onnx_session(partial, names)


def _onnx_session(path: Path, names: list[str]) -> _Exported:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = [o.name for o in session.get_outputs()]
    if found != names:
        raise ExportError(f"the ONNX exporter named the outputs {found}, expected {names}")

    def run(image: Tensor) -> dict[str, Tensor]:
        values = session.run(names, {INPUT_NAME: image.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(names, values)}

    # Already written where it was exported to; the shape is the file's own.
    return _Exported(run, list(session.get_inputs()[0].shape), lambda path, shape: None)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """onnx_ir warns about an empty attribute list of the exporter's own graph and onnxscript's optimiser logs
    each rewrite at INFO (nothing about the user's model); torch.onnx's deprecation notices name APIs this code
    does not call."""
    loggers = {name: logging.getLogger(name) for name in ("onnx_ir", "onnxscript")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


# ---- TorchScript ------------------------------------------------------------------------------------------

def _export_torchscript(wrapper: NamedOutputsModel, example: Tensor, names: list[str], dims: tuple[str, ...],
                        opset: int, partial: Path, size_multiple: int) -> _Exported:
    """torch.jit.trace returns a dict under the same names. Tracing records one path through the Python code;
    whether it holds at other sizes is what `_check_dynamic` finds out (declaring `dims` dynamic costs nothing
    here, so the attempts only differ in what is claimed)."""
    with warnings.catch_warnings():
        # Tracer warnings name every size-dependent Python branch; the size probe decides instead. torch.jit
        # is deprecated, but it is the format asked for.
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(wrapper, (example,), strict=False, check_trace=False)
        except Exception as error:
            raise ExportError(f"TorchScript tracing fails for this model ({_first_line(error)}); export it as "
                              "ONNX instead (--format onnx)") from error
    shape = [name if name in dims else int(example.shape[i]) for i, name in
             ((0, "batch"), (1, None), (2, "height"), (3, "width"))]

    def run(image: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return dict(traced(image))

    def save(path: Path, input_shape: list[int | str]) -> None:
        dynamic_size = any(isinstance(d, str) for d in input_shape[2:])
        extra = json.dumps({"outputs": names, "input_shape": input_shape,
                            "size_multiple": size_multiple if dynamic_size else None})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: extra})

    return _Exported(run, shape, save)


# ---- helpers ----------------------------------------------------------------------------------------------

def _example(trained: TrainedModel, example: Tensor | None) -> Tensor:
    if example is None:
        size, channels = trained.config.data.image_size, trained.model.backbone.in_channels
        generator = torch.Generator().manual_seed(0)
        return torch.rand(EXAMPLE_BATCH, channels, size, size, generator=generator)
    example = example.detach().float().cpu()
    if example.shape[0] < EXAMPLE_BATCH:  # repeat a lone image rather than let batch 1 be fixed
        example = example[torch.arange(EXAMPLE_BATCH) % example.shape[0]]
    return example.contiguous()


def _probe_input(example: Tensor, stride: int, dims: tuple[str, ...] = ("batch", "height", "width")) -> Tensor:
    """Another input for the dimensions in `dims`: three more images, one stride taller, two wider. The three
    steps differ, so an output dimension's change tells which input dimension it follows (a batch of 2 and a
    2-cell-high map grow apart)."""
    b, c, h, w = example.shape
    shape = (b + 3 if "batch" in dims else b, c, h + stride if "height" in dims else h,
             w + 2 * stride if "width" in dims else w)
    return torch.rand(*shape, generator=torch.Generator().manual_seed(1))


def _shape_patterns(wrapper: NamedOutputsModel, example: Tensor, reference: dict[str, Tensor],
                    stride: int) -> dict[str, str]:
    """Each output's shape in terms of B, H, W, from PyTorch at a second input of the most dimensions changed
    that the model runs at (a model fixed to one size gives plain numbers)."""
    for dims in ATTEMPTS:
        probe = _probe_input(example, stride, dims)
        try:
            with torch.no_grad():
                other = wrapper(probe)
        except Exception:  # the model's own size limits come as any type
            continue
        return {name: shape_pattern(tuple(value.shape), tuple(other[name].shape), tuple(example.shape),
                                    tuple(probe.shape)) for name, value in reference.items()}
    raise AssertionError("unreachable: the example itself runs")


def _next(dims: tuple[str, ...]) -> tuple[str, ...]:
    return ATTEMPTS[ATTEMPTS.index(dims) + 1] if dims in ATTEMPTS[:-1] else ()


def _describe(dims: tuple[str, ...]) -> str:
    return f"dynamic {'/'.join(dims)} only" if dims else "a static input shape"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
