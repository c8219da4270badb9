"""The predict job: checkpoints (one, or several as an ensemble) + image files -> predictions on disk.

    python -m pipeline predict runs/x/last.pt photos/ more/*.tif --out predictions/x [--tta] [--tile 512]

Leading arguments that name checkpoints (*.pt, *.pth, runs:/<id>) are the models; the rest are images, folders
or glob patterns. Writes predictions.json, masks/, detections.json (+ images.json: a COCO set),
reconstructions/ and overlays/ (pipeline/inference/writers.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from backbones.weights import WeightsFileError
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.inference.box_merging import METHODS
from pipeline.inference.ensemble import check_ensemble
from pipeline.inference.export import default_path
from pipeline.inference.onnx_runner import ExportedFileError, open_runner
from pipeline.inference.predict_images import PredictOptions, predict_images
from pipeline.inference.predictor import DEFAULT_TTA, Predictor, parse_views
from pipeline.inference.runner import Runner
from pipeline.inference.sources import expand_inputs
from pipeline.inference.trained import RUN_PREFIX, TrainedModel, load_trained
from pipeline.inference.writers import PredictionWriter
from pipeline.jobs.command import Command
from pipeline.runtime.device import select_device, select_precision

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
RUNTIMES = ("torch", "onnx", "torchscript")


def split_models(items: list[str]) -> tuple[list[str], list[str]]:
    """The leading checkpoint arguments, then the image arguments."""
    count = 0
    while count < len(items) and (items[count].startswith(RUN_PREFIX) or items[count].endswith(CHECKPOINT_SUFFIXES)):
        count += 1
    models, images = items[:count], items[count:]
    if not models:
        raise ConfigError(f"predict: expected a checkpoint (*.pt or runs:/<run id>) first, got {items[:1]}")
    if not images:
        raise ConfigError("predict: expected images, folders or glob patterns after the checkpoint(s)")
    return models, images


def load_members(sources: list[str], tasks: list[str] | None, tracking_uri: str | None) -> list[TrainedModel]:
    members = [load_trained(source, tracking_uri) for source in sources]
    check_ensemble(members)
    if tasks:
        unknown = sorted(set(tasks) - set(members[0].model.heads))
        if unknown:
            raise ConfigError(f"--tasks: {unknown} not in the model; it has {sorted(members[0].model.heads)}")
        for member in members:  # the model then runs only the heads asked for
            member.model.heads = nn.ModuleDict({t: member.model.heads[t] for t in tasks})
    return members


def runner_of(member: TrainedModel, runtime: str, model_file: str | None, some_tasks: bool) -> Runner:
    """The checkpoint's model, or its exported file in its runtime (with --tasks, outputs of the other heads
    are left unread)."""
    if runtime == "torch":
        return member.model
    path = Path(model_file) if model_file else default_path(member.checkpoint, runtime)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model; write it first with `python -m pipeline export "
                                f"{member.checkpoint} --format {runtime}`, or name it with --model-file")
    return open_runner(path, member.model.heads, runtime, allow_unused=some_tasks)


def output_folder(requested: str | None, first: TrainedModel, overwrite: bool) -> Path:
    """--out, refused when it holds an earlier prediction (unless --overwrite); by default a new folder
    predictions/<checkpoint folder>-<stem>[-N], so no earlier results are touched."""
    if requested:
        out = Path(requested)
        if (out / "predictions.json").exists() and not overwrite:
            raise ConfigError(f"--out {out}: holds earlier predictions (predictions.json); choose another "
                              "folder or pass --overwrite")
        return out
    base = Path("predictions") / f"{first.checkpoint.parent.name}-{first.checkpoint.stem}"
    out, number = base, 1
    while out.exists():
        number += 1
        out = base.with_name(f"{base.name}-{number}")
    return out


def run_predict(args: argparse.Namespace) -> tuple[Path, dict]:
    sources, image_args = split_models(args.items)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    if args.model_file and len(sources) > 1:
        raise ConfigError("--model-file names one exported file; an ensemble reads each member's file from beside "
                          "its checkpoint")
    members = load_members(sources, tasks, args.tracking_uri)
    inputs = expand_inputs(image_args)
    first = members[0]
    device = select_device(args.device)
    for member in members:
        member.model.to(device)
    try:
        views = parse_views(args.tta)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    runners = [runner_of(member, args.runtime, args.model_file, tasks is not None) for member in members]
    predictor = Predictor(runners, views, args.box_merge,
                          size_multiple=max(first.model.backbone.strides),
                          autocast=select_precision(first.config.train.amp, device).autocast()).eval()
    options = PredictOptions(image_size=first.config.data.image_size, resize=first.config.data.resize,
                             policy=first.policy, batch_size=args.batch_size, workers=args.workers,
                             tile=args.tile, tile_overlap=args.tile_overlap, conf=args.conf)
    out = output_folder(args.out, first, args.overwrite)
    # An error mid-way leaves the per-image files written so far, but no half-written JSON.
    with PredictionWriter(out, first.class_names, first.category_ids, top_k=args.top_k,
                          coco_images=Path(args.coco_images) if args.coco_images else None,
                          overlays=not args.no_overlays) as writer:
        for prediction in predict_images(predictor, inputs, options, device, progress=not args.quiet):
            writer.add(prediction)
    summary = writer.summary
    return out, {"images": len(inputs), "models": len(members), "views": len(views), "summary": summary}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="+", metavar="CHECKPOINT... IMAGES...",
                        help="checkpoint(s) (*.pt or runs:/<run id>; several: an ensemble), then image files, "
                             "folders or glob patterns")
    parser.add_argument("--out", help="output folder (default: a new one under predictions/)")
    parser.add_argument("--overwrite", action="store_true", help="write into an --out that holds predictions")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="data loading processes")
    parser.add_argument("--tasks", help="comma-separated tasks to predict (default: all)")
    parser.add_argument("--conf", type=float, default=0.25, help="detections scoring below this are not written")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per classification task")
    parser.add_argument("--tta", nargs="?", const="default",
                        help=f"test-time augmentation: comma-separated hflip, vflip, hvflip, scale=S "
                             f"(alone: {DEFAULT_TTA})")
    parser.add_argument("--box-merge", choices=METHODS, default="wbf",
                        help="how TTA views, ensemble members and tiles merge boxes")
    parser.add_argument("--tile", type=int, default=0, help="predict large images in windows of this many pixels")
    parser.add_argument("--tile-overlap", type=float, default=0.25)
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="run the checkpoint, or its exported ONNX / TorchScript file")
    parser.add_argument("--model-file", help="the exported file for --runtime (default: beside the checkpoint)")
    parser.add_argument("--coco-images", help="COCO annotation file whose image ids detections.json should use")
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument("--tracking-uri", help="MLflow store for runs:/ checkpoints (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> str:
    if args.tile and args.tile < 32:
        raise ConfigError(f"--tile: expected a window of at least 32 pixels, got {args.tile}")
    if not 0 <= args.tile_overlap < 1:
        raise ConfigError(f"--tile-overlap: expected a fraction in [0, 1), got {args.tile_overlap}")
    out, report = run_predict(args)
    counts = ", ".join(f"{task} ({count.kind}{f': {count.detections} boxes' if count.kind == 'detection' else ''})"
                       for task, count in report["summary"].tasks.items())
    return (f"predicted {report['images']} images with {report['models']} model(s) x {report['views']} view(s): "
            f"{counts}\nwrote {out}")


COMMAND = Command("predict", "predict on image files with one or more checkpoints (TTA, tiling, ONNX)",
                  add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError, ExportedFileError))
