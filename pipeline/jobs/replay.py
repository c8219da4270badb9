"""`python -m pipeline replay RUN_DIR [--uri URI]`: send the metrics a run kept locally (metrics.jsonl) that its
MLflow store lacks (pipeline/tracking/replay.py); safe to repeat."""
from __future__ import annotations

import argparse

from pipeline.jobs.command import Command
from pipeline.tracking.replay import replay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run's folder, runs/<name>/<run id>")
    parser.add_argument("--uri", help="MLflow store to send to (default: the one the run was started against)")


def run(args: argparse.Namespace) -> str:
    result = replay(args.run_dir, args.uri)
    return (f"run {result.run_id} on {result.uri}{' (created)' if result.created else ''}: "
            f"{result.sent} metric values sent, {result.present} already there, {len(result.uploaded)} files uploaded")


COMMAND = Command("replay", "send the metrics a run kept locally (metrics.jsonl) that its MLflow store lacks; safe to "
                  "repeat", add_arguments, run, user_errors=(FileNotFoundError, ValueError, ConnectionError))
