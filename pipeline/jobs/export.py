"""`python -m pipeline export CHECKPOINT|runs:/<id>`: an ONNX or TorchScript file, its sidecar JSON, and a parity
check against PyTorch on the checkpoint's val split (exit status 1 when the metrics differ)."""
from __future__ import annotations

import argparse
from pathlib import Path

from backbones.weights import WeightsFileError
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.inference.export import DEFAULT_OPSET, FORMATS, ExportError, ExportResult, default_path, export_model
from pipeline.inference.onnx_runner import ExportedFileError
from pipeline.inference.parity import DECIMALS, EXAMPLE_TOLERANCE, MAX_IMAGES, ParityReport, check_parity
from pipeline.inference.sidecar import WRITER, read_sidecar, sidecar_path, write_sidecar
from pipeline.inference.trained import RUN_PREFIX, load_trained
from pipeline.jobs.command import Command


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


def run(args: argparse.Namespace) -> tuple[str, int]:
    if args.max_images < 1:
        raise ExportError(f"--max-images: expected at least 1, got {args.max_images}")
    trained = load_trained(args.checkpoint, args.tracking_uri)
    out = Path(args.out) if args.out else _default_out(args.checkpoint, trained.checkpoint, args.format)
    refuse_foreign(out, trained.checkpoint)
    result = export_model(trained, out, args.format, dynamic=not args.static, opset=args.opset)
    result.sidecar["source"] = str(args.checkpoint)   # for runs:/, the checkpoint is a temporary download
    if args.no_check:
        write_sidecar(result.model_path, result.sidecar)
        return _summary(result) + "\nparity: not checked (--no-check)", 0
    report = check_parity(trained, result, args.max_images)
    result.sidecar["parity"] = report.to_dict()
    write_sidecar(result.model_path, result.sidecar)
    return _summary(result) + "\n" + parity_table(result, report), 0 if report.agrees else 1


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


def parity_table(result: ExportResult, report: ParityReport) -> str:
    outputs = result.sidecar["outputs"]
    width = max(len(o["name"]) for o in outputs + [{"name": "output"}])
    shape_width = max(len(o["shape"]) for o in outputs + [{"shape": "shape"}])
    lines = [f"{'output':<{width}}  {'shape':<{shape_width}}  max abs diff",
             f"{'-' * width}  {'-' * shape_width}  ------------"]
    lines += [f"{o['name']:<{width}}  {o['shape']:<{shape_width}}  {report.max_abs_diff.get(o['name'], float('nan')):.3g}"
              for o in outputs]
    if report.metrics_torch or report.metrics_export:
        names = sorted(set(report.metrics_torch) | set(report.metrics_export))
        rows = [name for name in names if name.count("/") == 1]   # per-class entries stay in the sidecar
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
                  "and outputs, and check it predicts what PyTorch predicts; exit 1 when it does not",
                  add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError, ExportError,
                               ExportedFileError))
