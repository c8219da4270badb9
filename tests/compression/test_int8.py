"""Post-training int8 quantisation (`export --int8`, pipeline/compression/int8.py): the int8 file holds int8
weights, is smaller and predicts close to the float file on val images; calibration reads the training split;
the command writes both files and sidecars, prints the int8 parity table, refuses a bad flag before any work,
and `predict` runs the int8 file like any ONNX file."""
from __future__ import annotations

import io
import json
import math
import shutil
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from datasets.build import build_dataset
from pipeline.compression.int8 import CalibrationImages, Int8Options, quantise, training_images
from pipeline.config.schema import split_paths
from pipeline.engine.data import read_options
from pipeline.inference.onnx_runner import OnnxRunner
from pipeline.inference.parity import ParityReport
from pipeline.inference.trained import load_trained
from pipeline.inference.val_data import evaluation_dataset
from pipeline.jobs.cli import main
from pipeline.jobs.export import judge_int8

CALIBRATION_IMAGES = 16


@dataclass
class Exported:
    checkpoint: Path
    float_path: Path
    int8_path: Path
    status: int
    printed: str


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Exported:
    """`export --int8` of the tiny trained run (static: a dynamic export of its ResNet takes half a minute)."""
    folder = tmp_path_factory.mktemp("int8")
    checkpoint = folder / "last.pt"   # a copy, so the shared run's folder stays as other tests expect it
    shutil.copy(tiny_run.checkpoint, checkpoint)
    printed = io.StringIO()
    with redirect_stdout(printed):
        status = main(["export", str(checkpoint), "--static", "--max-images", "8", "--int8",
                       "--calibration-images", str(CALIBRATION_IMAGES)])
    return Exported(checkpoint, folder / "last.onnx", folder / "last.int8.onnx", status, printed.getvalue())


def test_export_int8_writes_both_files_and_sidecars_and_prints_the_int8_parity_table(exported):
    assert exported.status == 0, exported.printed
    assert exported.float_path.is_file() and exported.int8_path.is_file()
    float_sidecar = json.loads(Path(f"{exported.float_path}.json").read_text())
    sidecar = json.loads(Path(f"{exported.int8_path}.json").read_text())
    assert "int8" not in float_sidecar and float_sidecar["parity"]["agrees"]
    assert sidecar["file"] == "last.int8.onnx" and sidecar["outputs"] == float_sidecar["outputs"]
    calibration = sidecar["int8"]["calibration"]
    assert calibration["method"] == "minmax" and calibration["images"] == CALIBRATION_IMAGES
    assert "train/annotations.json" in calibration["data"]
    parity = sidecar["parity"]
    assert parity["tolerance"] == 0.05 and parity["within_tolerance"] is True and parity["images"] == 8
    assert set(parity["drop"]) == {"cls/accuracy", "seg/mIoU", "seg/pixel_accuracy", "seg/dice", "det/mAP",
                                   "det/mAP50", "det/mAP75", "recon/psnr", "recon/mse", "recon/ssim"}
    table = exported.printed.split("wrote " + str(exported.int8_path))[1]
    assert "metric" in table and "float" in table and "int8" in table and "change" in table
    for name in [*parity["drop"], "cls_logits", "seg_logits", "det_8", "det_16", "det_32", "recon_image"]:
        assert name in table, name
    assert "int8 parity: no task metric dropped by more than 0.05" in table


def test_the_int8_verdict_judges_each_metric_on_its_scale_and_fails_beyond_the_tolerance():
    torch_side = {"cls/accuracy": 0.90, "det/mAP": 0.004, "recon/psnr": 20.0, "recon/mse": 0.010,
                  "seg/mIoU": math.nan, "seg/IoU/1": 0.5}
    int8_side = {"cls/accuracy": 0.80, "det/mAP": 0.002, "recon/psnr": 19.5, "recon/mse": 0.012,
                 "seg/mIoU": math.nan, "seg/IoU/1": 0.0}
    report = ParityReport({}, torch_side, int8_side, agrees=False, images=8, data="8 images")
    verdict = judge_int8(report, 0.05)
    # points up to 1 (a halved mAP near 0 is 0.002 worse, not 50%), a fraction of the value beyond (PSNR),
    # a higher MSE is worse; per-class entries are not judged
    assert verdict.drops == pytest.approx({"cls/accuracy": 0.10, "det/mAP": 0.002, "recon/psnr": 0.025,
                                           "recon/mse": 0.002, "seg/mIoU": 0.0})
    assert verdict.worse == ["cls/accuracy"] and verdict.within is False
    assert judge_int8(report, 0.1).within is True
    missing = ParityReport({}, {"cls/accuracy": 0.9}, {}, agrees=False, images=8, data="8 images")
    assert judge_int8(missing, 1.0).worse == ["cls/accuracy"]          # a metric int8 lacks fails any bound
    assert judge_int8(ParityReport({}, {}, {}, False, 2, "examples"), 0.05).within is None   # nothing to judge


def test_the_int8_file_holds_int8_weights_per_channel_and_is_smaller(exported):
    model = onnx.load(str(exported.int8_path))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}
    float_nodes = set(json.loads(Path(f"{exported.int8_path}.json").read_text())["int8"]["float_nodes"])
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    quantised = [node for node in layers if node.name not in float_nodes]
    assert len(quantised) > 30 and len(layers) - len(quantised) == 6   # one output layer per head output
    for node in quantised:
        dequantise = producer[node.input[1]]
        assert dequantise.op_type == "DequantizeLinear", node.name
        weight, scale = initializers[dequantise.input[0]], initializers[dequantise.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],), node.name   # one scale per channel
        assert not initializers[dequantise.input[2]].any(), node.name                        # symmetric
    for node in layers:
        if node.name in float_nodes:
            assert initializers[node.input[1]].dtype == np.float32, node.name
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert exported.int8_path.stat().st_size < exported.float_path.stat().st_size / 3


def test_the_int8_file_predicts_close_to_the_float_file_on_val_images(exported):
    trained = load_trained(exported.checkpoint)
    dataset, _ = evaluation_dataset(trained)
    images = torch.stack([dataset[i].image for i in range(len(dataset))])
    got = OnnxRunner(exported.int8_path, trained.model.heads).named(images)
    expected = OnnxRunner(exported.float_path, trained.model.heads).named(images)
    # Bounds from measurement, with margin: on this model int8 moves class probabilities by up to 0.014,
    # objectness probabilities by 0.009, reconstructed pixels by 0.032 (0.0008 on average), and changes no
    # pixel's segmentation class (the default job's MobileNetV2 over 200 val images: 0.086, 0.087, 0.105 and
    # 0.012 on average, 99.9% of pixels agreeing).
    probabilities = (got["cls_logits"].softmax(1) - expected["cls_logits"].softmax(1)).abs()
    assert probabilities.max() < 0.1
    assert (got["seg_logits"].argmax(1) == expected["seg_logits"].argmax(1)).float().mean() >= 0.95
    pixels = (got["recon_image"] - expected["recon_image"]).abs()
    assert pixels.max() < 0.1 and pixels.mean() < 0.01
    for name in ("det_8", "det_16", "det_32"):
        assert (got[name][..., 4].sigmoid() - expected[name][..., 4].sigmoid()).abs().max() < 0.1, name


def test_calibration_reads_images_spread_over_the_training_split_as_the_model_sees_them(tiny_run):
    trained = load_trained(tiny_run.checkpoint)
    calibration = training_images(trained, 5)
    annotations, images_root = split_paths(trained.config.data.train)
    train = build_dataset(trained.config.data.format, annotations, images_root, train=False,
                          options=read_options(trained.config.data, trained.policy), split="train")
    assert len(train) == 32 and calibration.indices == [0, 8, 16, 23, 31]   # spread, not the first five
    assert calibration.images.shape == (5, 3, 64, 64) and "train/annotations.json" in calibration.source
    for image, index in zip(calibration.images, calibration.indices):
        assert torch.equal(image, train[index].image)
    val, _ = evaluation_dataset(trained)
    assert not any(torch.equal(image, val[i].image) for image in calibration.images for i in range(len(val)))
    assert len(training_images(trained, 1000).indices) == 32   # all of a smaller split
    # A file of a static batch gets exactly that batch, completed with the set's first images; a dynamic one
    # batches of up to 8; either way every image once.
    static = list(CalibrationImages(calibration.images, 2))
    assert [feed["image"].shape[0] for feed in static] == [2, 2, 2]
    assert np.array_equal(static[-1]["image"][1], calibration.images[0].numpy())
    assert sum(feed["image"].shape[0] for feed in CalibrationImages(training_images(trained, 20).images, "batch")) == 20


def test_the_activation_ranges_come_from_the_calibration_images(exported, tmp_path):
    """Dimmer calibration images give the input a smaller quantisation scale: the images given are what the
    ranges are measured on."""
    trained = load_trained(exported.checkpoint)
    calibration = training_images(trained, 4)
    scales = {}
    for name, factor in (("bright", 1.0), ("dim", 0.25)):
        calibration.images = training_images(trained, 4).images * factor
        result = quantise(exported.float_path, tmp_path / f"{name}.int8.onnx", calibration, Int8Options(images=4))
        initializers = onnx.load(str(result.model_path)).graph.initializer
        scales[name] = {init.name: float(numpy_helper.to_array(init)) for init in initializers
                        if init.name == "image_scale"}
    assert scales["dim"]["image_scale"] == pytest.approx(scales["bright"]["image_scale"] * 0.25, rel=0.02)


def test_a_bad_int8_flag_is_a_clear_error_before_any_work(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")   # not even read: the flags are checked first
    cases = [(["--int8", "--calibration-images", "0"], "--calibration-images: expected at least 1 image, got 0"),
             (["--calibration-images", "8"], "--calibration-images: only used with --int8"),
             (["--int8", "--format", "torchscript"], "--int8: quantises the ONNX file"),
             (["--int8", "--int8-tolerance", "-1"], "--int8-tolerance: expected a number >= 0")]
    for flags, message in cases:
        assert main(["export", missing, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_predict_runs_the_int8_file_like_any_onnx_file(exported, tiny_run, tmp_path):
    out = tmp_path / "predictions"
    images = Path(tiny_run.config["data"]["val"]).parent / "images"
    assert main(["predict", str(exported.checkpoint), str(images), "--out", str(out), "--quiet", "--no-overlays",
                 "--runtime", "onnx", "--model-file", str(exported.int8_path)]) == 0
    predicted = json.loads((out / "predictions.json").read_text())["images"]
    assert len(predicted) == 8 and set(predicted[0]["tasks"]) == {"cls", "seg", "det", "recon"}
