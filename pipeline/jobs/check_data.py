"""`python -m pipeline check-data CONFIG [key=value ...] [--out DIR] [--samples N] [--track]`: look at the data
before training (pipeline/data_check/); exit status 1 when it found what would make training meaningless."""
from __future__ import annotations

import argparse
import dataclasses

from pipeline.config.schema import config_to_dict, load_config
from pipeline.config.typed import ConfigError
from pipeline.data_check.report import run_check_data
from pipeline.data_check.text import render_text
from pipeline.jobs.command import Command
from pipeline.tracking.tracker import Tracker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, as for train")
    parser.add_argument("--out", help="output folder (default: runs/<name>/check-data)")
    parser.add_argument("--samples", type=int, default=16, help="augmented training samples to draw (default 16)")
    parser.add_argument("--track", action="store_true",
                        help="also log samples.png and check_data.json to an MLflow run named check-data")


def run(args: argparse.Namespace) -> tuple[str, int]:
    """The report, and exit status 1 when it found what would make training meaningless."""
    config = load_config(args.config, args.overrides)
    tracker = None
    if args.track:
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


COMMAND = Command("check-data", "look at the data before training: sizes, value ranges, labels per class, skipped "
                  "entries, boxes against the detection strides, a grid of augmented samples; exit 1 on what would "
                  "make training meaningless", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, ValueError), takes_overrides=True)
