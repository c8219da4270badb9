"""The eval job: checkpoints (one, or several as an ensemble; optionally with TTA) and optionally other data ->
metrics.json + detections.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from backbones.weights import WeightsFileError
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.engine.data import eval_loader
from pipeline.engine.validation import Evaluation, evaluate
from pipeline.inference.box_merging import METHODS
from pipeline.inference.ensemble import check_ensemble
from pipeline.inference.predictor import DEFAULT_TTA, Predictor, parse_views
from pipeline.inference.trained import load_trained
from pipeline.inference.val_data import evaluation_dataset
from pipeline.jobs.command import Command
from pipeline.jobs.tables import metrics_table
from pipeline.model import MultiTaskModel
from pipeline.runtime.device import select_device, select_precision


def run_eval(checkpoints: str | Path | list[str | Path], data: str | None = None, images: str | None = None,
             out_dir: str | Path | None = None, device_name: str = "auto", tta: str | None = None,
             box_merge: str = "wbf", tracking_uri: str | None = None) -> tuple[Evaluation, Path]:
    """Evaluate on the first checkpoint's validation split, or on the data `data` (in its format); write the
    results to `out_dir`. Several checkpoints are evaluated as one ensemble."""
    sources = checkpoints if isinstance(checkpoints, list) else [checkpoints]
    members = [load_trained(source, tracking_uri) for source in sources]
    check_ensemble(members)
    try:
        views = parse_views(tta)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    first = members[0]
    dataset, annotations = evaluation_dataset(first, data, images)
    device = select_device(device_name)
    predictor = Predictor([member.model.to(device) for member in members], views, box_merge,
                          size_multiple=max(first.model.backbone.strides),
                          autocast=select_precision(first.config.train.amp, device).autocast())
    evaluation = evaluate(predictor, eval_loader(dataset, first.config.data, first.config.seed), device,
                          list(dataset.category_ids), collect_detections=True)
    out = Path(out_dir) if out_dir else first.checkpoint.parent
    write_results(evaluation, out)
    return evaluation, out


def write_results(evaluation: Evaluation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True))
    for task, results in evaluation.detections.items():
        name = "detections.json" if len(evaluation.detections) == 1 else f"detections_{task}.json"
        (out / name).write_text(json.dumps(results))


def model_from_checkpoint(checkpoint: Path) -> tuple[MultiTaskModel, dict]:
    """The trained model a checkpoint holds (its EMA weights when the run kept them: they are what its
    validation metrics and best.pt measured), and the checkpoint itself."""
    trained = load_trained(checkpoint)
    return trained.model, trained.state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="a checkpoint (*.pt or runs:/<run id>); several are evaluated as one ensemble")
    parser.add_argument("--data", help="annotations to evaluate on, in the checkpoint's data format "
                                       "(default: the config's val split)")
    parser.add_argument("--images", help="folder the annotation file's image paths are relative to")
    parser.add_argument("--out", help="output folder (default: the first checkpoint's folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tta", nargs="?", const="default",
                        help=f"test-time augmentation: comma-separated hflip, vflip, hvflip, scale=S "
                             f"(alone: {DEFAULT_TTA})")
    parser.add_argument("--box-merge", choices=METHODS, default="wbf",
                        help="how TTA views and ensemble members merge boxes")
    parser.add_argument("--tracking-uri", help="MLflow store for runs:/ checkpoints (default: $MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> str:
    evaluation, out = run_eval(args.checkpoints, args.data, args.images, args.out, args.device, args.tta,
                               args.box_merge, args.tracking_uri)
    return (metrics_table(evaluation.metrics, title="eval metrics")
            + f"\nwrote {out / 'metrics.json'}" + (" and detections" if evaluation.detections else ""))


COMMAND = Command("eval", "evaluate a checkpoint, an ensemble of checkpoints, with or without TTA; writes "
                  "metrics.json and detections.json", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError))
