"""Command line: `python -m pipeline train CONFIG [key=value ...] [--resume PATH|auto]`,
`python -m pipeline compare CONFIG [key=value ...]` (multi-task gain), `python -m pipeline eval CHECKPOINT`,
`python -m pipeline summary BACKBONE_OR_CONFIG` (complexity report) and
`python -m pipeline sample CHECKPOINT --task NAME` (images from a VAE head) and
`python -m pipeline replay RUN_DIR` (send a run's locally kept metrics to its MLflow store) and
`python -m pipeline check-data CONFIG [key=value ...] [--out DIR] [--samples N]` (look at the data before training)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from backbones.weights import WeightsFileError
from pipeline.config import load_config
from pipeline.report import metrics_table
from pipeline.typed_config import ConfigError, DataCheckError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the model a config describes")
    train.add_argument("config", help="experiment YAML")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=3")
    train.add_argument("--resume", metavar="PATH|auto",
                       help="continue from a checkpoint (auto: the newest last.pt of this experiment, if any); "
                            "the epoch count may be raised with train.epochs=N")
    compare = commands.add_parser(
        "compare", help="train each task alone and all together; report Delta_m, parameters and time")
    compare.add_argument("config", help="experiment YAML of the multi-task model")
    compare.add_argument("overrides", nargs="*", help="key.path=value overrides, applied to every run")
    ev = commands.add_parser("eval", help="evaluate a checkpoint; writes metrics.json and detections.json")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="COCO annotation file to evaluate on (default: the config's val split)")
    ev.add_argument("--images", help="folder the annotation file's image paths are relative to")
    ev.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    ev.add_argument("--device", default="auto")
    summary = commands.add_parser(
        "summary", help="complexity report: per-layer shape, params, FLOPs, activation memory, receptive field")
    summary.add_argument("target", help="backbone name, classifier name (with --classifier) or experiment YAML")
    summary.add_argument("--input", help="input CxHxW, e.g. 3x224x224 (default: 3x224x224, or the config's channels and image_size)")
    summary.add_argument("--classifier", action="store_true",
                         help="the whole published classifier (torchvision get_model, else timm) instead of the backbone")
    summary.add_argument("--depth", type=int, help="rows: modules N levels deep (default: conv/linear/pool/norm layers)")
    summary.add_argument("--classes", type=int, help="classes for a config's heads (default: from its data if cheap, else 3)")
    summary.add_argument("--no-rf", dest="receptive_fields", action="store_false",
                         help="skip the receptive-field measurement (faster on large models)")
    sample = commands.add_parser("sample", help="a PNG grid of images decoded from z ~ N(0, I) by a VAE head")
    sample.add_argument("checkpoint")
    sample.add_argument("--task", required=True, help="task name of the VAE head")
    sample.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    sample.add_argument("--out", help="PNG path (default: samples.png beside the checkpoint)")
    sample.add_argument("--seed", type=int, default=0)
    replay = commands.add_parser("replay", help="send the metrics a run kept locally (metrics.jsonl) that its MLflow "
                                                "store lacks; safe to repeat")
    replay.add_argument("run_dir", help="the run's folder, runs/<name>/<run id>")
    replay.add_argument("--uri", help="MLflow store to send to (default: the one the run was started against)")
    check = commands.add_parser(
        "check-data", help="look at the data before training: sizes, value ranges, labels per class, skipped entries, "
                           "boxes against the detection strides, a grid of augmented samples; exit 1 on what would "
                           "make training meaningless")
    check.add_argument("config", help="experiment YAML")
    check.add_argument("overrides", nargs="*", help="key.path=value overrides, as for train")
    check.add_argument("--out", help="output folder (default: runs/<name>/check-data)")
    check.add_argument("--samples", type=int, default=16, help="augmented training samples to draw (default 16)")
    check.add_argument("--track", action="store_true",
                       help="also log samples.png and check_data.json to an MLflow run named check-data")
    args, rest = parser.parse_known_args(argv)
    # `train CONFIG --resume auto a=1`: argparse stops collecting overrides at the flag; take the ones after it.
    takes_overrides = args.command in ("train", "compare", "check-data")
    if takes_overrides and all("=" in item and not item.startswith("-") for item in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def train(args: argparse.Namespace) -> str:
    from pipeline.train import run_training

    result, run_id = run_training(load_config(args.config, args.overrides), resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return ""
    return (metrics_table(result.evaluation.metrics, title=f"val metrics (run {run_id})")
            + f"\ntrained in {result.seconds:.0f} s; checkpoint: {result.checkpoint}")


def compare(args: argparse.Namespace) -> str:
    from pipeline.compare import report, run_compare

    comparison, path = run_compare(load_config(args.config, args.overrides))
    return f"{report(comparison)}\n\nwritten to {path}"


def evaluate(args: argparse.Namespace) -> str:
    from pipeline.eval_checkpoint import run_eval

    evaluation, out = run_eval(args.checkpoint, args.data, args.images, args.out, args.device)
    return (metrics_table(evaluation.metrics, title="eval metrics")
            + f"\nwrote {out / 'metrics.json'}" + (" and detections" if evaluation.detections else ""))


def summary(args: argparse.Namespace) -> str:
    from pipeline.summary import run as run_summary

    return run_summary(args.target, args.input, args.classifier, args.depth, args.classes, args.receptive_fields)


def sample(args: argparse.Namespace) -> str:
    from pipeline.sample_vae import run_sample

    return f"wrote {run_sample(args.checkpoint, args.task, args.num, args.out, args.seed)}"


def replay(args: argparse.Namespace) -> str:
    from pipeline.replay import replay as replay_run

    result = replay_run(args.run_dir, args.uri)
    return (f"run {result.run_id} on {result.uri}{' (created)' if result.created else ''}: "
            f"{result.sent} metric values sent, {result.present} already there, {len(result.uploaded)} files uploaded")


def check_data(args: argparse.Namespace) -> tuple[str, int]:
    """The report, and exit status 1 when it found what would make training meaningless."""
    from pipeline.check_data import render_text, run_check_data

    config = load_config(args.config, args.overrides)
    tracker = None
    if args.track:
        from pipeline.config import config_to_dict
        from pipeline.tracking import Tracker

        tracker = Tracker(dataclasses.replace(config.tracking, run_name="check-data"))
        tracker.start(config_to_dict(config), tags={"command": "check-data"})
    try:
        report = run_check_data(config, args.out, args.samples, tracker, source=args.config)
    except BaseException:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.end()
    return render_text(report), 1 if report.errors else 0


COMMANDS = {"train": train, "compare": compare, "eval": evaluate, "summary": summary, "sample": sample,
            "replay": replay, "check-data": check_data}
# Errors a user causes (bad config, missing file, unknown name or task) print one line and exit 2; the
# commands that only read names and files treat ValueError as such too, training lets it show its traceback.
USER_ERRORS = {"train": (ConfigError, FileNotFoundError, DataCheckError, WeightsFileError),
               "compare": (ConfigError, FileNotFoundError, DataCheckError, WeightsFileError),
               "eval": (ConfigError, FileNotFoundError, WeightsFileError),
               "summary": (ConfigError, FileNotFoundError, ValueError),
               "sample": (ConfigError, FileNotFoundError, ValueError),
               "replay": (FileNotFoundError, ValueError, ConnectionError),
               "check-data": (ConfigError, FileNotFoundError, ValueError)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s {'' if rank == '0' else f'[rank {rank}] '}%(name)s: %(message)s")
    try:
        result = COMMANDS[args.command](args)
        # A command returns its report, or (report, exit status) when what it found decides the status.
        report, status = result if isinstance(result, tuple) else (result, 0)
        if report:
            print(report)
    except USER_ERRORS[args.command] as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status
