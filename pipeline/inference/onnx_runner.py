"""Runners over exported files: `OnnxRunner` (onnxruntime) and `TorchScriptRunner` (torch.jit.load).

Both take the heads of the checkpoint the file came from (for `decode`, thresholds and anchors), run the file,
and hand back each head's raw outputs through `raw_outputs`, so decoding is the heads' own code in every
runtime. A file whose outputs are not the ones these heads read (another checkpoint's export) is refused when
it is opened, naming the missing and unexpected outputs, rather than failing or mis-decoding later.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.inference.named_outputs import _owner, raw_outputs
from pipeline.inference.sidecar import read_sidecar

log = logging.getLogger(__name__)

INPUT_NAME = "image"
# Inside a TorchScript file (torch.jit.save's extra files): its output names and input shape, so a runner can
# check them before running anything (a traced module does not list its dict keys).
TORCHSCRIPT_EXTRA = "export.json"


class ExportedFileError(ValueError):
    """An exported file that cannot be used: unreadable, or not written by `python -m pipeline export`."""


class OutputMismatchError(ExportedFileError):
    """An exported file whose outputs are not the ones the given heads read."""


class InputShapeError(ExportedFileError):
    """An image batch whose shape the exported file does not take (a static dimension, the wrong channels)."""


def expected_outputs(heads: nn.ModuleDict, names: list[str]) -> tuple[list[str], list[str]]:
    """(missing, unexpected): the names the heads would read that `names` lacks, and the names no head reads.

    What a head reads is whatever its `from_named_outputs` looks up; a dict that records its lookups finds that
    out without running anything, so a new head type needs no list of its names here."""
    read: set[str] = set()
    missing: list[str] = []
    for task, head in heads.items():
        probe = _RecordingDict({name[len(task) + 1:]: None for name in names if _owner(name, heads) == task})
        head.from_named_outputs(probe, (1, 1))
        read |= {f"{task}_{key}" for key in probe.looked_up}
        missing += [f"{task}_{key}" for key in probe.looked_up if key not in probe]
    return missing, [name for name in names if name not in read]


def check_outputs(path: Path, heads: nn.ModuleDict, names: list[str], allow_unused: bool = False) -> list[str]:
    """The names the heads read, in the file's order; raises naming what is missing or (unless
    `allow_unused`) what no head reads."""
    missing, unexpected = expected_outputs(heads, names)
    if allow_unused:
        unexpected = []
    if missing or unexpected:
        raise OutputMismatchError(
            f"{path}: its outputs do not match the model's heads ({', '.join(heads)}): "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}; expected the export of this same "
            f"checkpoint (its outputs: {names})")
    unused = set(expected_outputs(heads, names)[1])
    return [name for name in names if name not in unused]


class _RecordingDict(dict):
    def __init__(self, items: dict) -> None:
        super().__init__(items)
        self.looked_up: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.looked_up.append(key)
        return self.get(key)


def check_input(path: Path, image: Tensor, shape: list[int | str], size_multiple: int | None = None) -> None:
    """The file's input `shape` holds an int where a dimension is static, a name where it is dynamic. The batch
    is not checked: a file of a static batch size is run in chunks of it (`in_batches`). Dynamic sides must be
    multiples of the backbone's largest stride (the runtime's own error would not say so)."""
    if image.dim() != len(shape) or any(isinstance(want, int) and want != got
                                        for want, got in zip(shape[1:], image.shape[1:])):
        raise InputShapeError(f"{path}: input {INPUT_NAME!r} takes shape {shape} (names are free dimensions), "
                              f"got {list(image.shape)}")
    if size_multiple and any(side % size_multiple for side in image.shape[2:]):
        raise InputShapeError(f"{path}: image height and width must be multiples of {size_multiple} (the "
                              f"backbone's largest stride), got {list(image.shape[2:])}")


def in_batches(run: Callable[[Tensor], dict[str, Tensor]], image: Tensor, batch: int | str) -> dict[str, Tensor]:
    """`run` over `image` in chunks of a static `batch` size (the last one padded by repeating its first image,
    the padding's outputs dropped); a dynamic batch in one call."""
    if not isinstance(batch, int) or len(image) == batch:
        return run(image)
    parts: list[dict[str, Tensor]] = []
    for start in range(0, len(image), batch):
        chunk = image[start:start + batch]
        count = len(chunk)
        if count < batch:
            chunk = torch.cat([chunk, chunk[:1].expand(batch - count, *chunk.shape[1:])])
        parts.append({name: value[:count] for name, value in run(chunk).items()})
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


class OnnxRunner:
    """An ONNX file exported by `pipeline.inference.export` run in onnxruntime, as a `Runner`."""

    def __init__(self, path: str | Path, heads: nn.ModuleDict, device: str = "cpu",
                 session_options: Any = None, allow_unused: bool = False) -> None:
        """`device` "cuda" uses onnxruntime's CUDA provider when this onnxruntime build has it (else the CPU,
        with a warning). Outputs come back as torch tensors on the input's device either way.
        `allow_unused`: `heads` may be some of the file's tasks (the others' outputs are not computed)."""
        import onnxruntime as ort

        self.path, self.heads = Path(path), heads
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("%s: onnxruntime here has no CUDA provider (%s); running on the CPU", self.path,
                            ", ".join(ort.get_available_providers()))
        try:
            self.session = ort.InferenceSession(str(self.path), session_options, providers=providers)
        except Exception as error:  # onnxruntime raises its own types for a file that is not a valid model
            raise ExportedFileError(f"{self.path}: onnxruntime cannot load it ({str(error).splitlines()[0]}); "
                                      "expected an ONNX file written by `python -m pipeline export`") from None
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ExportedFileError(f"{self.path}: expected one input named {INPUT_NAME!r}, "
                                      f"got {[i.name for i in inputs]}")
        self.input_shape = list(inputs[0].shape)
        self.size_multiple = (read_sidecar(self.path) or {}).get("input", {}).get("size_multiple")
        self.file_outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = check_outputs(self.path, heads, self.file_outputs, allow_unused)

    def eval(self) -> "OnnxRunner":
        """For code written for nn.Module (pipeline.engine.validation.evaluate calls model.eval())."""
        return self

    def named(self, image: Tensor) -> dict[str, Tensor]:
        """The file's outputs by name, as torch tensors on `image`'s device."""
        check_input(self.path, image, self.input_shape, self.size_multiple)
        return in_batches(self._run, image, self.input_shape[0])

    def _run(self, image: Tensor) -> dict[str, Tensor]:
        array = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
        values = self.session.run(self.output_names, {INPUT_NAME: array})
        return {name: torch.from_numpy(value).to(image.device) for name, value in zip(self.output_names, values)}

    def __call__(self, image: Tensor) -> dict[str, Any]:
        return raw_outputs(self.heads, self.named(image), (image.shape[-2], image.shape[-1]))


class TorchScriptRunner:
    """A TorchScript file exported by `pipeline.inference.export` (torch.jit.load), as a `Runner`."""

    def __init__(self, path: str | Path, heads: nn.ModuleDict, device: str = "cpu", allow_unused: bool = False) -> None:
        """As OnnxRunner; a traced module computes every output, the unused ones are dropped."""
        self.path, self.heads = Path(path), heads
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such TorchScript file")
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            with warnings.catch_warnings():   # torch.jit is deprecated, but it is the format asked for
                warnings.simplefilter("ignore", category=FutureWarning)
                self.module = torch.jit.load(str(self.path), map_location=device, _extra_files=extra)
        except RuntimeError as error:
            raise ExportedFileError(f"{self.path}: torch.jit.load cannot read it ({str(error).splitlines()[0]}); "
                                      "expected a TorchScript file written by `python -m pipeline export`") from None
        if not extra[TORCHSCRIPT_EXTRA]:
            raise ExportedFileError(f"{self.path}: no {TORCHSCRIPT_EXTRA} inside (its output names); expected a "
                                      "TorchScript file written by `python -m pipeline export`")
        stored = json.loads(extra[TORCHSCRIPT_EXTRA])
        self.file_outputs, self.input_shape = list(stored["outputs"]), list(stored["input_shape"])
        self.size_multiple = stored.get("size_multiple")
        self.device = torch.device(device)
        self.output_names = check_outputs(self.path, heads, self.file_outputs, allow_unused)

    def eval(self) -> "TorchScriptRunner":
        return self

    def named(self, image: Tensor) -> dict[str, Tensor]:
        check_input(self.path, image, self.input_shape, self.size_multiple)
        if image.device != self.device:
            self.module, self.device = self.module.to(image.device), image.device
        return in_batches(self._run, image, self.input_shape[0])

    def _run(self, image: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            outputs = self.module(image.float())
        return {name: outputs[name] for name in self.output_names}

    def __call__(self, image: Tensor) -> dict[str, Any]:
        return raw_outputs(self.heads, self.named(image), (image.shape[-2], image.shape[-1]))


def open_runner(path: str | Path, heads: nn.ModuleDict, format: str, device: str = "cpu",
                allow_unused: bool = False) -> OnnxRunner | TorchScriptRunner:
    """The runner of an exported file of `format` ("onnx" or "torchscript"); `allow_unused`: the file may have
    outputs of heads not in `heads` (predict --tasks)."""
    if format == "onnx":
        return OnnxRunner(path, heads, device, allow_unused=allow_unused)
    if format == "torchscript":
        return TorchScriptRunner(path, heads, device, allow_unused=allow_unused)
    raise ValueError(f"export format: expected 'onnx' or 'torchscript', got {format!r}")
