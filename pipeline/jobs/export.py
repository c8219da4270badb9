"""`python -m pipeline export CHECKPOINT|runs:/<id>`: an ONNX or TorchScript file, its sidecar JSON, and a parity
check against PyTorch on the checkpoint's val split (exit status 1 when the metrics differ). With --int8, also
`<stem>.int8.onnx` (pipeline/compression/int8.py) with its own sidecar and parity table; int8 cannot agree
exactly, so it fails only when a task metric drops by more than --int8-tolerance."""
from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass
from pathlib import Path

from backbones.weights import WeightsFileError
from pipeline.compression.int8 import (
    CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_IMAGES, Int8Error, Int8Options, Int8Result, int8_path, quantise,
    training_images,
)
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.inference.export import DEFAULT_OPSET, FORMATS, ExportError, ExportResult, default_path, export_model
from pipeline.inference.onnx_runner import ExportedFileError
from pipeline.inference.parity import (
    DECIMALS, EXAMPLE_TOLERANCE, MAX_IMAGES, ParityReport, check_parity, metric_drops, task_metrics,
)
from pipeline.inference.sidecar import WRITER, read_sidecar, sidecar_path, write_sidecar
from pipeline.inference.trained import RUN_PREFIX, TrainedModel, load_trained
from pipeline.jobs.command import Command

# The largest drop of a task metric the int8 file may show against the float model before the command fails, on
# the metric's scale (`metric_drops`: points for metrics up to 1, a fraction of the value for PSNR). Measured on
# the default job, int8 costs at most 0.019 (det/mAP75) on the default 64 parity images, 0.003 on all 200 val
# images, and 0.05 dB of PSNR (0.2%); on 64 images one image changing class moves an accuracy by 0.016; a broken
# quantisation (a saturated layer, ranges from the wrong images) costs tens of points. 0.05 passes the first
# with margin, allows three images of 64 to change class, and stops the last.
INT8_TOLERANCE = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or runs:/<run id> (its best.pt, else last.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--static", action="store_true",
                        help="fix the input at a batch of 2 and the trained image size (runners feed other batches in "
                             "chunks; default: dynamic batch and size)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--out", help="the file to write (default: beside the checkpoint, <stem>.onnx or "
                                      "<stem>.torchscript.pt; for runs:/ in the current folder, <run id>.<suffix>)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES,
                        help=f"val images the parity check runs (default {MAX_IMAGES})")
    parser.add_argument("--tracking-uri", help="MLflow store for runs:/ (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--int8", action="store_true",
                        help="also write <stem>.int8.onnx: post-training int8 quantisation (onnxruntime, QDQ, int8 "
                             "weights per channel, uint8 activations) calibrated on the checkpoint's training images")
    parser.add_argument("--calibration-images", type=int,
                        help=f"--int8: training images the activation ranges are calibrated on (default "
                             f"{DEFAULT_IMAGES}, spread over the split)")
    parser.add_argument("--calibration", choices=list(CALIBRATIONS),
                        help=f"--int8: how ranges come from those images (default {DEFAULT_CALIBRATION})")
    parser.add_argument("--int8-tolerance", type=float,
                        help=f"--int8: exit 1 when a task metric of the int8 file is worse than the float model's "
                             f"by more than this: in points for metrics up to 1 (accuracy, mIoU, mAP), as a fraction "
                             f"of the value beyond (PSNR) (default {INT8_TOLERANCE})")


@dataclass
class Int8Request:
    options: Int8Options
    tolerance: float


@dataclass
class Int8Verdict:
    drops: dict[str, float]        # "task/metric" -> how much worse int8 is (`metric_drops`); negative: better
    worse: list[str]               # the metrics that dropped by more than the tolerance
    within: bool | None            # None: no metrics to judge by (no val data)


def judge_int8(report: ParityReport, tolerance: float) -> Int8Verdict:
    drops = metric_drops(report)
    worse = sorted(name for name, drop in drops.items() if drop > tolerance)
    return Int8Verdict(drops, worse, not worse if drops else None)


def run(args: argparse.Namespace) -> tuple[str, int]:
    if args.max_images < 1:
        raise ExportError(f"--max-images: expected at least 1, got {args.max_images}")
    int8 = int8_request(args)   # before anything is loaded: a bad flag costs nothing
    trained = load_trained(args.checkpoint, args.tracking_uri)
    out = Path(args.out) if args.out else _default_out(args.checkpoint, trained.checkpoint, args.format)
    refuse_foreign(out, trained.checkpoint)
    if int8:
        refuse_foreign(int8_path(out), trained.checkpoint)
        # Read before exporting: a training split that is gone stops the command before it writes anything.
        calibration = training_images(trained, int8.options.images)
    result = export_model(trained, out, args.format, dynamic=not args.static, opset=args.opset)
    result.sidecar["source"] = str(args.checkpoint)   # for runs:/, the checkpoint is a temporary download
    max_images = None if args.no_check else args.max_images
    text, status = _checked(trained, result, max_images)
    if int8:
        quantised = quantise(result.model_path, int8_path(result.model_path), calibration, int8.options)
        int8_text, int8_status = _checked_int8(trained, result, quantised, int8.tolerance, max_images)
        text, status = text + "\n\n" + int8_text, max(status, int8_status)
    return text, status


def _checked(trained: TrainedModel, result: ExportResult, max_images: int | None) -> tuple[str, int]:
    """Write the sidecar with the parity check's result (None: not checked); the report and exit status."""
    if max_images is None:
        write_sidecar(result.model_path, result.sidecar)
        return _summary(result) + "\nparity: not checked (--no-check)", 0
    report = check_parity(trained, result, max_images)
    result.sidecar["parity"] = report.to_dict()
    write_sidecar(result.model_path, result.sidecar)
    return _summary(result) + "\n" + parity_table(result, report), 0 if report.agrees else 1


def int8_request(args: argparse.Namespace) -> Int8Request | None:
    """The --int8 options, checked; None without --int8 (its options alone are an error, not ignored)."""
    given = [flag for flag, value in (("--calibration-images", args.calibration_images),
                                      ("--calibration", args.calibration), ("--int8-tolerance", args.int8_tolerance))
             if value is not None]
    if not args.int8:
        if given:
            raise ExportError(f"{', '.join(given)}: only used with --int8")
        return None
    if args.format != "onnx":
        raise ExportError(f"--int8: quantises the ONNX file; expected --format onnx, got --format {args.format}")
    tolerance = INT8_TOLERANCE if args.int8_tolerance is None else args.int8_tolerance
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ExportError(f"--int8-tolerance: expected a number >= 0 (e.g. 0.05: 5 points of accuracy or "
                          f"mAP, 5% of PSNR), got {tolerance}")
    images = DEFAULT_IMAGES if args.calibration_images is None else args.calibration_images
    options = Int8Options(calibration=args.calibration or DEFAULT_CALIBRATION, images=images)
    return Int8Request(options, tolerance)


def _checked_int8(trained: TrainedModel, result: ExportResult, quantised: Int8Result, tolerance: float,
                  max_images: int | None) -> tuple[str, int]:
    """As `_checked` for the int8 file: its sidecar is the float file's plus how it was quantised, and its
    metrics are judged against the float model's within `tolerance` (not judged without val data)."""
    sidecar = int8_sidecar(result.sidecar, quantised)
    int8_result = ExportResult(quantised.model_path, sidecar_path(quantised.model_path), "onnx", result.outputs,
                               result.input_shape, result.fallbacks, sidecar)
    summary = _int8_summary(int8_result, quantised)
    if max_images is None:
        write_sidecar(quantised.model_path, sidecar)
        return summary + "\nint8 parity: not checked (--no-check)", 0
    report = check_parity(trained, int8_result, max_images)
    verdict = judge_int8(report, tolerance)
    sidecar["parity"] = {**report.to_dict(), "drop": _finite_or_none(verdict.drops), "tolerance": tolerance,
                         "within_tolerance": verdict.within}
    write_sidecar(quantised.model_path, sidecar)
    table = int8_table(int8_result, report, tolerance, verdict.worse)
    return summary + "\n" + table, 0 if verdict.within is not False else 1


def int8_sidecar(float_sidecar: dict, quantised: Int8Result) -> dict:
    sidecar = copy.deepcopy(float_sidecar)
    sidecar.update(file=quantised.model_path.name, int8=quantised.describe(), parity=None)
    return sidecar


def _default_out(source: str, checkpoint: Path, format: str) -> Path:
    if source.startswith(RUN_PREFIX):  # the local copy sits in a temporary download folder
        run_id = source[len(RUN_PREFIX):].split("/")[0]
        return Path.cwd() / default_path(Path(f"{run_id}.pt"), format).name
    return default_path(checkpoint, format)


def refuse_foreign(out: Path, checkpoint: Path) -> None:
    """Overwrite only what an earlier export wrote (its sidecar says so); any other file is the user's."""
    if out.resolve() == checkpoint.resolve():
        raise ExportError(f"--out {out}: that is the checkpoint itself; choose another file")
    ours = (read_sidecar(out) or {}).get("written_by") == WRITER
    for path in (out, sidecar_path(out)):
        if path.exists() and not ours:
            raise ExportError(f"{path}: exists and was not written by `{WRITER}`; remove it or choose --out")


def _summary(result: ExportResult) -> str:
    shape = ", ".join(str(d) for d in result.input_shape)
    lines = [f"wrote {result.model_path} ({result.format}) and {result.sidecar_path}",
             f"input: image float32 [{shape}] in [0, 1]; {result.sidecar['input']['size_rule']}"]
    lines += [f"note: {reason}" for reason in result.fallbacks]
    return "\n".join(lines)


def _int8_summary(result: ExportResult, quantised: Int8Result) -> str:
    calibration = quantised.describe()["calibration"]
    ratio = quantised.float_bytes / max(quantised.int8_bytes, 1)
    return (f"wrote {result.model_path} (int8 ONNX, {quantised.int8_bytes / 1e6:.1f} MB, {ratio:.1f}x smaller than the "
            f"float file) and {result.sidecar_path}\n"
            f"int8: calibrated ({calibration['method']}) on {calibration['images']} images of {calibration['data']}; "
            f"{len(quantised.excluded)} nodes left in float (each head's output layer)")


def int8_table(result: ExportResult, report: ParityReport, tolerance: float, worse: list[str]) -> str:
    """The outputs' differences from PyTorch, then each task metric of the float model and of the int8 file."""
    lines = _outputs_table(result, report)
    names = task_metrics(report)
    if names:
        metric_width = max(len(name) for name in names + ["metric"])
        lines += ["", f"{'metric':<{metric_width}}  {'float':>9}  {'int8':>9}  {'change':>9}",
                  f"{'-' * metric_width}  ---------  ---------  ---------"]
        for name in names:
            before, after = report.metrics_torch.get(name, math.nan), report.metrics_export.get(name, math.nan)
            lines.append(f"{name:<{metric_width}}  {before:9.4f}  {after:9.4f}  {after - before:+9.4f}")
        verdict = (f"no task metric dropped by more than {tolerance:g} (--int8-tolerance: points for metrics up to 1, "
                   f"a fraction of the value beyond)" if not worse else
                   f"dropped by more than {tolerance:g} (--int8-tolerance): {', '.join(worse)}")
    else:
        verdict = "no metrics to compare (the val split is not there), so no verdict on accuracy"
    return "\n".join(lines + ["", f"int8 parity: {verdict} ({report.data})"])


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    """For the sidecar (JSON has no infinity)."""
    return {name: value if math.isfinite(value) else None for name, value in values.items()}


def _outputs_table(result: ExportResult, report: ParityReport) -> list[str]:
    outputs = result.sidecar["outputs"]
    width = max(len(o["name"]) for o in outputs + [{"name": "output"}])
    shape_width = max(len(o["shape"]) for o in outputs + [{"shape": "shape"}])
    lines = [f"{'output':<{width}}  {'shape':<{shape_width}}  max abs diff",
             f"{'-' * width}  {'-' * shape_width}  ------------"]
    lines += [f"{o['name']:<{width}}  {o['shape']:<{shape_width}}  {report.max_abs_diff.get(o['name'], float('nan')):.3g}"
              for o in outputs]
    return lines


def parity_table(result: ExportResult, report: ParityReport) -> str:
    lines = _outputs_table(result, report)
    if report.metrics_torch or report.metrics_export:
        rows = task_metrics(report)   # per-class entries stay in the sidecar
        metric_width = max(len(name) for name in rows + ["metric"])
        lines += ["", f"{'metric':<{metric_width}}  {'torch':>9}  {'export':>9}",
                  f"{'-' * metric_width}  ---------  ---------"]
        lines += [f"{name:<{metric_width}}  {report.metrics_torch.get(name, float('nan')):9.4f}  "
                  f"{report.metrics_export.get(name, float('nan')):9.4f}" for name in rows]
        verdict = f"metrics equal to {DECIMALS} decimals: {'yes' if report.agrees else 'no'}"
        if report.differing:
            verdict += f" (differ: {', '.join(report.differing)})"
    else:
        verdict = f"outputs within {EXAMPLE_TOLERANCE:g}: {'yes' if report.agrees else 'no'}"
    lines += ["", f"parity: {verdict} ({report.data})"]
    return "\n".join(lines)


COMMAND = Command("export", "export a checkpoint to ONNX or TorchScript with a sidecar JSON describing its inputs "
                  "and outputs, and check it predicts what PyTorch predicts; exit 1 when it does not (--int8: also "
                  "an int8 ONNX file, calibrated on training images, its metrics within --int8-tolerance)",
                  add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError, ExportError,
                               ExportedFileError, Int8Error))
