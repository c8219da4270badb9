"""Command line: `python -m pipeline train CONFIG [key=value ...]` and `python -m pipeline eval CHECKPOINT`."""
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            from pipeline.train import run_training

            result, run_id = run_training(load_config(args.config, args.overrides))
            print(metrics_table(result.evaluation.metrics, title=f"val metrics (run {run_id})"))
            print(f"trained in {result.seconds:.0f} s; checkpoint: {result.checkpoint}")
        else:
            from pipeline.eval_checkpoint import run_eval

            evaluation, out = run_eval(args.checkpoint, args.data, args.images, args.out, args.device)
            print(metrics_table(evaluation.metrics, title="eval metrics"))
            print(f"wrote {out / 'metrics.json'}" + (" and detections" if evaluation.detections else ""))
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
