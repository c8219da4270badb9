"""Post-training int8 quantisation of an exported ONNX file: the float file and calibration images in, an int8
ONNX file out (onnxruntime.quantization: `quant_pre_process`, then `quantize_static` in QDQ format).

Weights are int8, symmetric, one scale per output channel; activations uint8 (asymmetric: most follow a ReLU
and are never negative) or int8, their ranges calibrated by running the float file on images of the
checkpoint's TRAINING split, read as evaluation reads images (its image policy, size, channels, the
validation transform: no augmentation). The val split stays unseen by calibration, so the parity check on it
measures what quantisation costs. The int8 file takes the same float32 input and returns the same float32
outputs under the same names, so every runner of ONNX files runs it unchanged.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import chdir, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, create_calibrator, quant_pre_process,
    quantize_static, save_tensors_data,
)
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from datasets.build import build_dataset
from pipeline.config.schema import split_paths
from pipeline.engine.data import data_errors, read_options
from pipeline.inference.onnx_runner import INPUT_NAME
from pipeline.inference.trained import TrainedModel

log = logging.getLogger(__name__)

CALIBRATIONS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
DEFAULT_IMAGES = 64
DEFAULT_CALIBRATION = "minmax"
SUFFIX = ".int8.onnx"
# Entropy: the histogram the KL search cuts (onnxruntime's default, 128, leaves it nothing to cut: min/max).
# On the default job's model 2048 (TensorRT's) took 123 s against 27 s for 512, for no better metrics overall
# (200 val images: seg mIoU 0.866 against 0.871, PSNR 20.86 against 20.99 dB, det mAP 0.639 against 0.621).
ENTROPY_BINS = 512
CALIBRATION_BATCH = 8          # images per calibration run of a dynamic-batch file (memory stays small)
# Ops that only move, reshape or squash a head's result on its way to a graph output: walking back through
# them from an output finds the layer that computes it.
PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Sigmoid", "Softmax",
                "Cast"}
COMPUTING = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class Int8Error(ValueError):
    """What stops a quantisation: a bad option, no training images to calibrate on."""


@dataclass
class Int8Options:
    calibration: str = DEFAULT_CALIBRATION     # --calibration: how activation ranges come from the images
    images: int = DEFAULT_IMAGES               # --calibration-images
    # uint8: onnxruntime's x86 int8 kernels take uint8 activations with int8 weights (the VNNI path); int8
    # activations measured 1.7x slower there (default job: 5.0 ms against 2.9 ms, float 4.9 ms).
    activations: str = "uint8"                 # "uint8" | "int8"
    # Each head's last layer (and the reshapes after it) in float: measured on the default job (200 val
    # images), quantising them too costs det mAP 0.005 (0.629 -> 0.624) for 0.2 ms less of 3.1 ms; kept in
    # float every task metric stays within 0.001 of the float model's (recon PSNR within 0.05 dB).
    float_output_layers: bool = True

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise Int8Error(f"--calibration: expected one of {list(CALIBRATIONS)}, got {self.calibration!r}")
        if self.images < 1:
            raise Int8Error(f"--calibration-images: expected at least 1 image, got {self.images}")
        if self.activations not in ACTIVATION_TYPES:
            raise Int8Error(f"activation type: expected one of {list(ACTIVATION_TYPES)}, got {self.activations!r}")


@dataclass
class CalibrationSet:
    images: Tensor                 # [N, C, H, W] float32 in [0, 1], as the model sees them
    source: str                    # which split, where
    indices: list[int]             # which of its images


@dataclass
class Int8Result:
    model_path: Path
    float_path: Path
    options: Int8Options
    calibration: CalibrationSet
    excluded: list[str] = field(default_factory=list)   # nodes left in float
    float_bytes: int = 0
    int8_bytes: int = 0

    def describe(self) -> dict:
        """For the int8 file's sidecar."""
        symmetry = "asymmetric" if self.options.activations == "uint8" else "symmetric"
        return {"dtype": "int8", "format": "QDQ (QuantizeLinear/DequantizeLinear around float ops)",
                "float_file": self.float_path.name,
                "weights": "int8, symmetric, per output channel",
                "activations": f"{self.options.activations}, {symmetry}, per tensor",
                "calibration": {"method": self.options.calibration, "images": len(self.calibration.indices),
                                "data": self.calibration.source, "indices": self.calibration.indices},
                "float_nodes": self.excluded, "bytes": {"float": self.float_bytes, "int8": self.int8_bytes},
                "tool": "onnxruntime.quantization: quant_pre_process, then quantize_static"}


def int8_path(float_path: Path) -> Path:
    """last.onnx -> last.int8.onnx."""
    return float_path.with_name(float_path.stem + SUFFIX)


# ---- calibration data -------------------------------------------------------------------------------------

def training_images(trained: TrainedModel, count: int) -> CalibrationSet:
    """`count` images of the checkpoint's training split (all of them when it has fewer), read as evaluation
    reads images. They are spread evenly over the split rather than its first ones: a folder-per-class split is
    in class order, and the first images would calibrate on one class."""
    if count < 1:
        raise Int8Error(f"--calibration-images: expected at least 1 image, got {count}")
    dataset, source = _training_split(trained)
    if len(dataset) == 0:
        raise Int8Error(f"{source}: no images to calibrate on; expected at least one image in the training split")
    indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round()})
    with data_errors("data.train"):
        images = torch.stack([dataset[i].image for i in indices]).float()
    return CalibrationSet(images.contiguous(), source, indices)


def _training_split(trained: TrainedModel) -> tuple[Dataset, str]:
    data = trained.config.data
    options = read_options(data, trained.policy)
    try:
        with data_errors("data.sources" if data.sources else "data.train"):
            if data.sources:   # a mixture: every source's training split
                parts = [build_dataset(s.format, Path(s.train), Path(s.images_root) if s.images_root else None,
                                       train=False, options=options, split="train") for s in data.sources]
                names = ", ".join(s.train for s in data.sources)
                return ConcatDataset(parts), f"the mixture's training splits ({names})"
            annotations, images_root = split_paths(data.train)
            return build_dataset(data.format, annotations, images_root, train=False, options=options,
                                 split="train"), f"the training split {annotations}"
    except FileNotFoundError as error:
        raise Int8Error(f"int8 calibration reads the checkpoint's training split, which is not there (moved?): "
                        f"{error}") from error


class CalibrationImages(CalibrationDataReader):
    """The calibration images as onnxruntime's calibrators ask for them: one feed {input name: array} per
    call, None at the end. A file of a static batch size gets batches of exactly that size (the last one
    completed with the set's first images; repeating images does not change a min/max and barely a
    histogram)."""

    def __init__(self, images: Tensor, batch: int | str) -> None:
        self.images = images.detach().to("cpu", torch.float32).numpy()
        self.static = isinstance(batch, int)
        self.batch = batch if self.static else CALIBRATION_BATCH
        self.position = 0

    def __len__(self) -> int:
        """Feeds in one pass (onnxruntime's reader contract; `list()` asks for it)."""
        return -(-len(self.images) // self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.images):
            return None
        chunk = self.images[self.position:self.position + self.batch]
        self.position += self.batch
        if self.static and len(chunk) < self.batch:
            chunk = np.concatenate([chunk, self.images[np.arange(self.batch - len(chunk)) % len(self.images)]])
        return {INPUT_NAME: np.ascontiguousarray(chunk)}


# ---- quantisation -----------------------------------------------------------------------------------------

def quantise(float_path: Path, out: Path, images: CalibrationSet, options: Int8Options) -> Int8Result:
    """Write `out`, the int8 version of the float ONNX file `float_path`, calibrated on `images`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        prepared, ranges = Path(scratch) / "prepared.onnx", Path(scratch) / "ranges.json"
        _prepare(float_path, prepared)
        model = onnx.load(str(prepared))
        excluded = output_layers(model) if options.float_output_layers else []
        log.info("int8: calibrating %s on %d images of %s (%s)", float_path.name, len(images.images),
                 images.source, options.calibration)
        _calibrate(prepared, CalibrationImages(images.images, _input_batch(model)), options, Path(scratch), ranges)
        try:
            _quantise_static(prepared, partial, ranges, excluded, options)
            _keep_output_shapes(float_path, partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return Int8Result(out, float_path, options, images, excluded, float_path.stat().st_size, out.stat().st_size)


def _quantise_static(prepared: Path, out: Path, ranges: Path, excluded: list[str], options: Int8Options) -> None:
    try:
        with _quiet():
            quantize_static(
                str(prepared), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=ACTIVATION_TYPES[options.activations], weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATIONS[options.calibration], nodes_to_exclude=excluded,
                calibration_cache_path=str(ranges),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": options.activations == "int8"})
    except Exception as error:  # onnxruntime.quantization raises many types; the reason is in the message
        raise Int8Error(f"onnxruntime.quantization cannot quantise this model ({_first_line(error)})") from error


def _calibrate(prepared: Path, reader: CalibrationImages, options: Int8Options, scratch: Path, ranges: Path) -> None:
    """Each activation's range, written where `quantize_static` reads a calibration cache. Calibrated here
    rather than inside `quantize_static`, which neither passes the histogram size on (the entropy method with
    its default of as many bins as quantised levels has nothing to choose from and returns the min/max) nor
    bounds memory (it keeps every image's activations until the end): the calibrator sees one batch at a time
    and merges."""
    try:
        with _quiet():
            calibrator = create_calibrator(prepared, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                           calibrate_method=CALIBRATIONS[options.calibration],
                                           extra_options=_calibrator_options(options))
            for feed in reader:
                calibrator.collect_data(_OneFeed(feed))
            save_tensors_data(calibrator.compute_data(), ranges)
    except Exception as error:  # onnxruntime raises its own types; the reason is in the message
        raise Int8Error(f"onnxruntime.quantization cannot calibrate this model ({_first_line(error)})") from error


def _calibrator_options(options: Int8Options) -> dict:
    # A range symmetric about 0 (the percentile calibrator's default) would waste half of uint8's levels on the
    # many activations that follow a ReLU and are never negative.
    extra: dict = {"symmetric": options.activations == "int8"}
    if options.calibration == "entropy":
        extra["num_bins"] = ENTROPY_BINS
    return extra


class _OneFeed(CalibrationDataReader):
    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self.feed: dict[str, np.ndarray] | None = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self.feed = self.feed, None
        return feed


@contextmanager
def _quiet() -> Iterator[None]:
    """The calibrators print their progress to stdout, which is the export command's report."""
    with redirect_stdout(io.StringIO()) as printed:
        yield
    for line in printed.getvalue().splitlines():
        log.debug("onnxruntime.quantization: %s", line)


def _prepare(float_path: Path, prepared: Path) -> None:
    """Shape inference and onnxruntime's graph optimisations (BatchNorm folded, ops fused) first, as onnxruntime
    recommends: the fused graph takes fewer quantise/dequantise pairs. The exported files' dynamic height and
    width meet in a U-Net's skip connections as two symbols for one size, which symbolic shape inference only
    resolves with `auto_merge`; a graph it still cannot follow is prepared with ONNX's own shape inference.
    Run from the scratch folder: a failed symbolic inference leaves its partial model in the working folder."""
    source, target = str(float_path.resolve()), str(prepared.resolve())
    with chdir(prepared.parent):
        try:
            quant_pre_process(source, target, auto_merge=True)
        except Exception as error:  # the shape inferer raises a bare Exception
            log.warning("int8: symbolic shape inference fails on %s (%s); using ONNX shape inference only",
                        float_path, _first_line(error))
            quant_pre_process(source, target, skip_symbolic_shape=True)


def output_layers(model: onnx.ModelProto) -> list[str]:
    """The nodes that compute the graph's outputs: from each output back along the data input of ops that only
    reshape or squash it (PASS_THROUGH) to the first Conv/Gemm/MatMul; that layer and the ops after it. All of
    the path is named: a float layer whose output is quantised again for a quantised Sigmoid or Reshape after it
    would have its weights quantised by onnxruntime itself (its DQ -> Conv -> Q fusion quantises float weights)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    found: list[str] = []
    for output in model.graph.output:
        node, path = producer.get(output.name), []
        while node is not None and node.op_type in PASS_THROUGH:
            path.append(node.name)
            node = producer.get(node.input[0])
        if node is not None and node.op_type in COMPUTING:
            found += [node.name, *reversed(path)]
    return list(dict.fromkeys(found))


def _keep_output_shapes(float_path: Path, quantised: Path) -> None:
    """The float file's output shapes in the int8 file: symbolic shape inference renames their free dimensions
    to expressions such as 'floor(height/8 - 1/8) + 1' (the file runs alike, but reads worse)."""
    shapes = {output.name: output.type for output in onnx.load(str(float_path), load_external_data=False).graph.output}
    model = onnx.load(str(quantised))
    for output in model.graph.output:
        if output.name in shapes:
            output.type.CopyFrom(shapes[output.name])
    onnx.save(model, str(quantised))


def _input_batch(model: onnx.ModelProto) -> int | str:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "batch")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
