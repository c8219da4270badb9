"""Command line: `python -m pipeline train CONFIG [key=value ...]`, `python -m pipeline eval CHECKPOINT` and
`python -m pipeline summary BACKBONE_OR_CONFIG` (complexity report) and
`python -m pipeline sample CHECKPOINT --task NAME` (images from a VAE head)."""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import load_config
from pipeline.report import metrics_table
from pipeline.typed_config import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the model a config describes")
    train.add_argument("config", help="experiment YAML")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=3")
    ev = commands.add_parser("eval", help="evaluate a checkpoint; writes metrics.json and detections.json")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="COCO annotation file to evaluate on (default: the config's val split)")
    ev.add_argument("--images", help="folder the annotation file's image paths are relative to")
    ev.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    ev.add_argument("--device", default="auto")
    summary = commands.add_parser(
        "summary", help="complexity report: per-layer shape, params, FLOPs, activation memory, receptive field")
    summary.add_argument("target", help="backbone name, classifier name (with --classifier) or experiment YAML")
    summary.add_argument("--input", help="input CxHxW, e.g. 3x224x224 (default: 3x224x224, or the config's image_size)")
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
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> str:
    from pipeline.train import run_training

    result, run_id = run_training(load_config(args.config, args.overrides))
    return (metrics_table(result.evaluation.metrics, title=f"val metrics (run {run_id})")
            + f"\ntrained in {result.seconds:.0f} s; checkpoint: {result.checkpoint}")


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


COMMANDS = {"train": train, "eval": evaluate, "summary": summary, "sample": sample}
# Errors a user causes (bad config, missing file, unknown name or task) print one line and exit 2; the
# commands that only read names and files treat ValueError as such too, training lets it show its traceback.
USER_ERRORS = {"train": (ConfigError, FileNotFoundError), "eval": (ConfigError, FileNotFoundError),
               "summary": (ConfigError, FileNotFoundError, ValueError),
               "sample": (ConfigError, FileNotFoundError, ValueError)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        print(COMMANDS[args.command](args))
    except USER_ERRORS[args.command] as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
